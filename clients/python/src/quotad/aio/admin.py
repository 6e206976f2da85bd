"""`quotad.aio.Admin`: the Admin service on asyncio; see `quotad.Admin` for what each
call does and which are retried."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from .. import _convert as cv
from .. import models as m
from ..v1 import quotad_pb2 as pb
from ..v1 import quotad_pb2_grpc as pb_grpc
from ._connection import Connection


class Admin(Connection):
    """A connection to quotad's Admin service; arguments as for `quotad.aio.Client`."""

    @cached_property
    def stub(self) -> pb_grpc.AdminAsyncStub:
        return pb_grpc.AdminStub(self.channel)

    async def create_account(self, account_id: str, balance: cv.Amount | None = None) -> m.Balance:
        req = pb.CreateAccountRequest(account_id=account_id)
        if balance is not None:
            req.balance.CopyFrom(cv.money_in("balance", balance))
        return cv.balance_out(await self._call(self.stub.CreateAccount, req, repeatable=False))

    async def top_up(
        self, account_id: str, amount: cv.Amount, topup_id: str | None = None
    ) -> m.Balance:
        req = pb.TopUpRequest(
            account_id=account_id,
            amount=cv.money_in("amount", amount),
            topup_id=topup_id or cv.new_id(),
        )
        return cv.balance_out(await self._call(self.stub.TopUp, req))

    async def purchase(
        self,
        account_id: str,
        sku: str,
        purchase_id: str | None = None,
        effective_at_ms: int | None = None,
    ) -> m.Purchase:
        req = pb.PurchaseRequest(
            account_id=account_id,
            sku=sku,
            purchase_id=purchase_id or cv.new_id(),
            effective_at_ms=effective_at_ms or 0,
        )
        return cv.purchase_out(await self._call(self.stub.Purchase, req))

    async def grant_credit(
        self,
        account_id: str,
        grant_id: str,
        amount: cv.Amount,
        expires_at_ms: int,
        kind: m.GrantKind | str = m.GrantKind.COUPON,
        resource: cv.ResourceArg | None = None,
    ) -> m.Grant:
        req = pb.GrantCreditRequest(
            account_id=account_id,
            grant_id=grant_id,
            kind=cv.grant_kind_in(kind),
            resource=cv.resource_in(resource, m.Resource.UNSPECIFIED),
            amount=cv.money_in("amount", amount),
            expires_at_ms=expires_at_ms,
        )
        return cv.grant_out(await self._call(self.stub.GrantCredit, req))

    async def catalog(self) -> list[m.Sku]:
        r = await self._call(self.stub.GetCatalog, pb.GetCatalogRequest())
        return [cv.sku_out(s) for s in r.skus]

    async def statement(self, account_id: str) -> m.Statement:
        req = pb.GetStatementRequest(account_id=account_id)
        return cv.statement_out(await self._call(self.stub.GetStatement, req))

    async def create_token(
        self,
        kind: m.PrincipalKind | str,
        *,
        account_id: str = "",
        name: str = "",
    ) -> m.Token:
        principal = pb.Principal(kind=cv.principal_kind_in(kind), account_id=account_id, name=name)
        req = pb.CreateTokenRequest(principal=principal)
        return cv.token_out(await self._call(self.stub.CreateToken, req, repeatable=False))

    async def revoke_token(self, token_id: str) -> bool:
        req = pb.RevokeTokenRequest(token_id=token_id)
        return (await self._call(self.stub.RevokeToken, req)).revoked

    async def grant_access(
        self, account_id: str, sub_user: str, permissions: Sequence[str]
    ) -> m.Access:
        req = pb.GrantAccessRequest(
            account_id=account_id, sub_user=sub_user, permissions=list(permissions)
        )
        return cv.access_out(await self._call(self.stub.GrantAccess, req))

    async def revoke_access(
        self, account_id: str, sub_user: str, permissions: Sequence[str] = ()
    ) -> m.Access:
        req = pb.RevokeAccessRequest(
            account_id=account_id, sub_user=sub_user, permissions=list(permissions)
        )
        return cv.access_out(await self._call(self.stub.RevokeAccess, req))
