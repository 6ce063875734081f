//! The small SQL surface both backends share: parameter and column values, rows, and the
//! [`Tx`] trait the store logic in `ops` is written against. Statements use `$n` placeholders
//! and SQL that PostgreSQL and SQLite both accept; the SQLite backend rewrites `$n` to `?n`.

use crate::{Result, StoreError};

/// A parameter or column value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    I64(i64),
    Text(String),
    Bool(bool),
    Bytes(Vec<u8>),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::I64(v)
    }
}
impl From<i32> for Val {
    fn from(v: i32) -> Self {
        Val::I64(i64::from(v))
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Self {
        Val::I64(i64::from(v))
    }
}
impl From<u16> for Val {
    fn from(v: u16) -> Self {
        Val::I64(i64::from(v))
    }
}
/// Counters are u64 in the domain and BIGINT in the database; saturate instead of wrapping.
impl From<u64> for Val {
    fn from(v: u64) -> Self {
        Val::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Self {
        Val::Bool(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(v)
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::Text(v.clone())
    }
}
impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Self {
        Val::Bytes(v)
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map_or(Val::Null, Into::into)
    }
}

/// One result row, decoded by position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row(pub Vec<Val>);

fn bad_column(i: usize, want: &str, got: &Val) -> StoreError {
    let got = match got {
        Val::Null => "NULL",
        Val::I64(_) => "integer",
        Val::Text(_) => "text",
        Val::Bool(_) => "boolean",
        Val::Bytes(_) => "bytes",
    };
    StoreError::Internal(format!("column {i}: expected {want}, found {got}"))
}

impl Row {
    fn at(&self, i: usize) -> Result<&Val> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Internal(format!("column {i} missing")))
    }

    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Text(s) => Ok(Some(s.clone())),
            v => Err(bad_column(i, "text", v)),
        }
    }

    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?
            .ok_or_else(|| bad_column(i, "text", &Val::Null))
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::I64(v) => Ok(Some(*v)),
            v => Err(bad_column(i, "integer", v)),
        }
    }

    pub fn i64(&self, i: usize) -> Result<i64> {
        self.opt_i64(i)?
            .ok_or_else(|| bad_column(i, "integer", &Val::Null))
    }

    /// A non-negative counter.
    pub fn u64(&self, i: usize) -> Result<u64> {
        Ok(u64::try_from(self.i64(i)?).unwrap_or(0))
    }

    pub fn u32(&self, i: usize) -> Result<u32> {
        let v = self.i64(i)?;
        u32::try_from(v).map_err(|_| StoreError::Internal(format!("column {i}: {v} out of range")))
    }

    pub fn opt_u32(&self, i: usize) -> Result<Option<u32>> {
        self.opt_i64(i)?
            .map(|v| {
                u32::try_from(v)
                    .map_err(|_| StoreError::Internal(format!("column {i}: {v} out of range")))
            })
            .transpose()
    }

    /// SQLite has no boolean type: 0/1 integers count as booleans.
    pub fn bool(&self, i: usize) -> Result<bool> {
        match self.at(i)? {
            Val::Bool(b) => Ok(*b),
            Val::I64(v) => Ok(*v != 0),
            v => Err(bad_column(i, "boolean", v)),
        }
    }

    pub fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Bytes(b) => Ok(Some(b.clone())),
            v => Err(bad_column(i, "bytes", v)),
        }
    }

    pub fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        match self.at(i)? {
            Val::Bytes(b) => Ok(b.clone()),
            v => Err(bad_column(i, "bytes", v)),
        }
    }
}

/// A connection or transaction of either backend. The store logic is written once against
/// this; each backend supplies the transaction boundaries.
pub(crate) trait Tx {
    /// Runs a statement; returns the number of rows it changed.
    async fn exec(&self, sql: &str, params: &[Val]) -> Result<u64>;
    async fn query(&self, sql: &str, params: &[Val]) -> Result<Vec<Row>>;
    /// Runs several parameterless statements (migrations).
    async fn batch(&self, sql: &str) -> Result<()>;
    /// Serialises migration runs across processes until the transaction ends.
    async fn lock_migrations(&self) -> Result<()>;
    /// Serialises change-log writers until the transaction ends, so change versions become
    /// visible in the order they were assigned and no reader ever skips one.
    async fn lock_change_log(&self) -> Result<()>;
    /// Serialises folds of gateway observations until the transaction ends: each reads the
    /// accounts' shared state and writes it back, which must not interleave.
    async fn lock_observations(&self) -> Result<()>;
    /// Locks one account's credential row until the transaction ends (PostgreSQL
    /// `SELECT … FOR UPDATE`; SQLite's write transaction already excludes other writers), so
    /// two token refreshers never both read the same refresh token as unclaimed.
    async fn lock_credentials(&self, account_id: &str) -> Result<()>;
    /// Called after a change-log row was written (PostgreSQL notifies other replicas).
    async fn changed(&self, version: i64) -> Result<()>;
}

/// Builds a WHERE clause with numbered parameters.
#[derive(Debug, Default)]
pub(crate) struct Where {
    conds: Vec<String>,
    pub params: Vec<Val>,
}

impl Where {
    /// Adds a condition; each `?` in `template` becomes the next `$n` bound to `vals` in order.
    pub fn add(&mut self, template: &str, vals: Vec<Val>) {
        let mut out = String::with_capacity(template.len() + 8);
        let mut vals = vals.into_iter();
        for ch in template.chars() {
            if ch == '?'
                && let Some(v) = vals.next()
            {
                self.params.push(v);
                out.push('$');
                out.push_str(&self.params.len().to_string());
                continue;
            }
            out.push(ch);
        }
        self.conds.push(out);
    }

    /// The next free parameter number.
    pub fn next_param(&self) -> usize {
        self.params.len() + 1
    }

    /// ` WHERE a AND b`, or nothing.
    pub fn clause(&self) -> String {
        if self.conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conds.join(" AND "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_numbers_parameters_in_order() {
        let mut w = Where::default();
        assert_eq!(w.clause(), "");
        w.add("a = ?", vec![1i64.into()]);
        w.add("(t, id) < (?, ?)", vec![5i64.into(), "x".into()]);
        assert_eq!(w.clause(), " WHERE a = $1 AND (t, id) < ($2, $3)");
        assert_eq!(
            w.params,
            vec![Val::I64(1), Val::I64(5), Val::Text("x".into())]
        );
        assert_eq!(w.next_param(), 4);
    }

    #[test]
    fn row_decoding() {
        let r = Row(vec![
            Val::Null,
            Val::I64(1),
            Val::Text("t".into()),
            Val::I64(-3),
        ]);
        assert_eq!(r.opt_text(0).unwrap(), None);
        assert!(r.text(0).is_err());
        assert!(r.bool(1).unwrap());
        assert_eq!(r.text(2).unwrap(), "t");
        assert!(r.i64(2).is_err());
        assert_eq!(r.u64(3).unwrap(), 0);
        assert!(r.u32(3).is_err());
        assert!(r.text(9).is_err());
        assert_eq!(Val::from(u64::MAX), Val::I64(i64::MAX));
        assert_eq!(Val::from(None::<String>), Val::Null);
    }
}
