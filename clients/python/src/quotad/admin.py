"""`quotad.Admin`: the Admin service for operators (blocking API).

Served by `quotad serve` in embedded mode and by `quotad ledger` otherwise; it needs the
operator token, except grant/revoke access, which an account's owner may call. Calls with
a client id (top-up, purchase, grant credit) and reads are retried with the same id;
creating an account or a token is not repeatable and is never retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from . import _convert as cv
from . import models as m
from ._connection import Connection
from .v1 import quotad_pb2 as pb
from .v1 import quotad_pb2_grpc as pb_grpc


class Admin(Connection):
    """A connection to quotad's Admin service; arguments as for `quotad.Client`."""

    @cached_property
    def stub(self) -> pb_grpc.AdminStub:
        """The generated stub, for calls this class does not wrap."""
        return pb_grpc.AdminStub(self.channel)

    def create_account(self, account_id: str, balance: cv.Amount | None = None) -> m.Balance:
        """A new account, with an opening balance (default zero). Not retried: a second
        attempt would fail with AlreadyExists."""
        req = pb.CreateAccountRequest(account_id=account_id)
        if balance is not None:
            req.balance.CopyFrom(cv.money_in("balance", balance))
        return cv.balance_out(self._call(self.stub.CreateAccount, req, repeatable=False))

    def top_up(self, account_id: str, amount: cv.Amount, topup_id: str | None = None) -> m.Balance:
        """Adds `amount` to the balance; a retry with the same `topup_id` (default a new
        UUID, reused by this call's retries) adds nothing."""
        req = pb.TopUpRequest(
            account_id=account_id,
            amount=cv.money_in("amount", amount),
            topup_id=topup_id or cv.new_id(),
        )
        return cv.balance_out(self._call(self.stub.TopUp, req))

    def purchase(
        self,
        account_id: str,
        sku: str,
        purchase_id: str | None = None,
        effective_at_ms: int | None = None,
    ) -> m.Purchase:
        """Records a purchase of a plan or package (paid outside quotad) and returns its
        grants. `effective_at_ms` earlier than now imports a plan bought elsewhere."""
        req = pb.PurchaseRequest(
            account_id=account_id,
            sku=sku,
            purchase_id=purchase_id or cv.new_id(),
            effective_at_ms=effective_at_ms or 0,
        )
        return cv.purchase_out(self._call(self.stub.Purchase, req))

    def grant_credit(
        self,
        account_id: str,
        grant_id: str,
        amount: cv.Amount,
        expires_at_ms: int,
        kind: m.GrantKind | str = m.GrantKind.COUPON,
        resource: cv.ResourceArg | None = None,
    ) -> m.Grant:
        """A coupon or trial credit of `amount` until `expires_at_ms`, for `resource`
        (default: any). A retry with the same `grant_id` returns the existing grant."""
        req = pb.GrantCreditRequest(
            account_id=account_id,
            grant_id=grant_id,
            kind=cv.grant_kind_in(kind),
            resource=cv.resource_in(resource, m.Resource.UNSPECIFIED),
            amount=cv.money_in("amount", amount),
            expires_at_ms=expires_at_ms,
        )
        return cv.grant_out(self._call(self.stub.GrantCredit, req))

    def catalog(self) -> list[m.Sku]:
        """Prices, plans and packages."""
        r = self._call(self.stub.GetCatalog, pb.GetCatalogRequest())
        return [cv.sku_out(s) for s in r.skus]

    def statement(self, account_id: str) -> m.Statement:
        """The account's latest charges and what paid each of them."""
        req = pb.GetStatementRequest(account_id=account_id)
        return cv.statement_out(self._call(self.stub.GetStatement, req))

    def create_token(
        self,
        kind: m.PrincipalKind | str,
        *,
        account_id: str = "",
        name: str = "",
    ) -> m.Token:
        """A token for an operator (`name`), an account's owner (`account_id`), a
        sub-user (`name`) or a sidecar (`name`). Shown once: keep `token.token` safe.
        Not retried: a second attempt would make a second token."""
        principal = pb.Principal(kind=cv.principal_kind_in(kind), account_id=account_id, name=name)
        req = pb.CreateTokenRequest(principal=principal)
        return cv.token_out(self._call(self.stub.CreateToken, req, repeatable=False))

    def revoke_token(self, token_id: str) -> bool:
        """Revokes a token by id; True once it is revoked (also if it was already)."""
        req = pb.RevokeTokenRequest(token_id=token_id)
        return self._call(self.stub.RevokeToken, req).revoked

    def grant_access(self, account_id: str, sub_user: str, permissions: Sequence[str]) -> m.Access:
        """Lets a sub-user do `permissions` ("reserve", "admit", "sessions", "balance",
        "watch") on the account; returns all it may do there now."""
        req = pb.GrantAccessRequest(
            account_id=account_id, sub_user=sub_user, permissions=list(permissions)
        )
        return cv.access_out(self._call(self.stub.GrantAccess, req))

    def revoke_access(
        self, account_id: str, sub_user: str, permissions: Sequence[str] = ()
    ) -> m.Access:
        """Takes `permissions` (default: all) away from a sub-user on the account."""
        req = pb.RevokeAccessRequest(
            account_id=account_id, sub_user=sub_user, permissions=list(permissions)
        )
        return cv.access_out(self._call(self.stub.RevokeAccess, req))
