//! Set-based writes, built column by column: every column of a table's new rows is bound
//! as one array and the rows are read back with `UNNEST`, so a statement writes any number
//! of rows in one round trip and with one bind per column (sqlx's `QueryBuilder` binds one
//! value per cell, and PostgreSQL takes at most 65,535). Money and quotas go as text and
//! are cast to NUMERIC in the statement (see the module doc of `postgres`).

use sqlx::postgres::{PgArguments, PgHasArrayType};
use sqlx::{Arguments, Encode, PgConnection, Postgres, Type};

/// The rows of one table to write, and the columns bound so far.
pub(super) struct Unnest<'r, R> {
    rows: &'r [R],
    /// Column names in bind order (`v.NAME` in the statement).
    names: Vec<&'static str>,
    /// Per column: the array's element type (`text`, `int8`...), for `$n::TYPE[]`.
    types: Vec<&'static str>,
    /// Per column: what the statement selects (`v.NAME`, or `v.NAME::numeric`).
    reads: Vec<String>,
    args: PgArguments,
    /// The first value that could not be bound; the statement then fails with it.
    bind_error: Option<sqlx::error::BoxDynError>,
}

impl<'r, R> Unnest<'r, R> {
    pub(super) fn new(rows: &'r [R]) -> Self {
        Unnest {
            rows,
            names: Vec::new(),
            types: Vec::new(),
            reads: Vec::new(),
            args: PgArguments::default(),
            bind_error: None,
        }
    }

    fn column<T>(
        mut self,
        name: &'static str,
        sql_type: &'static str,
        cast: &str,
        values: Vec<T>,
    ) -> Self
    where
        T: Encode<'r, Postgres> + Type<Postgres> + PgHasArrayType + 'r,
    {
        debug_assert_eq!(values.len(), self.rows.len(), "one value per row");
        if let Err(e) = Arguments::<'r>::add(&mut self.args, values)
            && self.bind_error.is_none()
        {
            self.bind_error = Some(e);
        }
        self.names.push(name);
        self.types.push(sql_type);
        self.reads.push(format!("v.{name}{cast}"));
        self
    }

    pub(super) fn text(self, name: &'static str, f: impl Fn(&'r R) -> &'r str) -> Self {
        let values: Vec<&str> = self.rows.iter().map(f).collect();
        self.column(name, "text", "", values)
    }

    pub(super) fn text_opt(self, name: &'static str, f: impl Fn(&'r R) -> Option<&'r str>) -> Self {
        let values: Vec<Option<&str>> = self.rows.iter().map(f).collect();
        self.column(name, "text", "", values)
    }

    /// A NUMERIC column, bound as decimal text.
    pub(super) fn numeric(self, name: &'static str, f: impl Fn(&'r R) -> String) -> Self {
        let values: Vec<String> = self.rows.iter().map(f).collect();
        self.column(name, "text", "::numeric", values)
    }

    pub(super) fn numeric_opt(
        self,
        name: &'static str,
        f: impl Fn(&'r R) -> Option<String>,
    ) -> Self {
        let values: Vec<Option<String>> = self.rows.iter().map(f).collect();
        self.column(name, "text", "::numeric", values)
    }

    pub(super) fn int8(self, name: &'static str, f: impl Fn(&'r R) -> i64) -> Self {
        let values: Vec<i64> = self.rows.iter().map(f).collect();
        self.column(name, "int8", "", values)
    }

    pub(super) fn int4(self, name: &'static str, f: impl Fn(&'r R) -> i32) -> Self {
        let values: Vec<i32> = self.rows.iter().map(f).collect();
        self.column(name, "int4", "", values)
    }

    pub(super) fn boolean(self, name: &'static str, f: impl Fn(&'r R) -> bool) -> Self {
        let values: Vec<bool> = self.rows.iter().map(f).collect();
        self.column(name, "bool", "", values)
    }

    /// `UNNEST($1::text[], $2::int8[]...) AS v(a, b...)`: the rows as a table `v`.
    fn source(&self) -> String {
        let arrays: Vec<String> = (1..)
            .zip(&self.types)
            .map(|(n, t)| format!("${n}::{t}[]"))
            .collect();
        format!(
            "UNNEST({}) AS v({})",
            arrays.join(", "),
            self.names.join(", ")
        )
    }

    /// `INSERT INTO table (columns) SELECT ... FROM UNNEST(...)`, then `rest` (an
    /// `ON CONFLICT` clause, or nothing).
    pub(super) fn insert(self, table: &str, rest: &str) -> Written {
        let sql = format!(
            "INSERT INTO {table} ({}) SELECT {} FROM {} {rest}",
            self.names.join(", "),
            self.reads.join(", "),
            self.source()
        );
        self.finish(sql)
    }

    /// A statement of the caller's over the rows: `sql` gets the row source (`UNNEST(...)
    /// AS v(...)`) and refers to the columns as `v.NAME`.
    pub(super) fn statement(self, sql: impl FnOnce(&str) -> String) -> Written {
        let sql = sql(&self.source());
        self.finish(sql)
    }

    fn finish(self, sql: String) -> Written {
        Written {
            empty: self.rows.is_empty(),
            sql,
            args: match self.bind_error {
                None => Ok(self.args),
                Some(e) => Err(e),
            },
        }
    }
}

/// A built set-based statement, ready to run in a transaction.
pub(super) struct Written {
    /// No rows: nothing is sent.
    empty: bool,
    sql: String,
    args: Result<PgArguments, sqlx::error::BoxDynError>,
}

impl Written {
    /// Runs the statement (unless there are no rows); how many rows it changed.
    pub(super) async fn execute(self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        if self.empty {
            return Ok(0);
        }
        let args = self.args.map_err(sqlx::Error::Encode)?;
        let done = sqlx::query_with(&self.sql, args).execute(conn).await?;
        Ok(done.rows_affected())
    }

    /// Runs a statement that returns one text column per row (`RETURNING id`).
    pub(super) async fn fetch_text(
        self,
        conn: &mut PgConnection,
    ) -> Result<Vec<String>, sqlx::Error> {
        if self.empty {
            return Ok(Vec::new());
        }
        let args = self.args.map_err(sqlx::Error::Encode)?;
        sqlx::query_scalar_with(&self.sql, args)
            .fetch_all(conn)
            .await
    }

    #[cfg(test)]
    fn sql(&self) -> &str {
        &self.sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_names_each_column_once_and_casts_numeric_text() {
        let rows = [("a", 1_i64, "2.5"), ("b", 2, "3")];
        let w = Unnest::new(&rows)
            .text("id", |r| r.0)
            .int8("at_ms", |r| r.1)
            .numeric("amount", |r| r.2.to_owned())
            .insert("topups", "ON CONFLICT (id) DO NOTHING");
        assert_eq!(
            w.sql(),
            "INSERT INTO topups (id, at_ms, amount) SELECT v.id, v.at_ms, v.amount::numeric \
             FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS v(id, at_ms, amount) \
             ON CONFLICT (id) DO NOTHING"
        );
        assert!(!w.empty);
        assert!(w.args.is_ok());
    }

    #[test]
    fn a_statement_of_the_callers_reads_the_same_source() {
        let rows = [("g1", "1.5")];
        let w = Unnest::new(&rows)
            .text("grant_id", |r| r.0)
            .numeric("remaining", |r| r.1.to_owned())
            .statement(|src| {
                format!("UPDATE grants SET remaining = v.remaining::numeric FROM {src}")
            });
        assert_eq!(
            w.sql(),
            "UPDATE grants SET remaining = v.remaining::numeric FROM \
             UNNEST($1::text[], $2::text[]) AS v(grant_id, remaining)"
        );
        let none: [(&str, &str); 0] = [];
        assert!(
            Unnest::new(&none)
                .text("grant_id", |r| r.0)
                .insert("t", "")
                .empty
        );
    }
}
