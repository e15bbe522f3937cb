//! The database URL: parsed once, printed with its password masked.

use std::fmt;

/// A database URL whose password is masked when printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(url::Url);

impl DatabaseUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let u = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(u.scheme(), "postgres" | "postgresql") {
            return Err("must start with postgres://".into());
        }
        if u.path().trim_start_matches('/').is_empty() {
            return Err("must name a database (postgres://host/dbname)".into());
        }
        Ok(DatabaseUrl(u))
    }
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
    pub fn database_name(&self) -> String {
        let name = self.0.path().trim_start_matches('/');
        percent_decode(name)
    }
    /// The same server, another database (to create this one).
    pub fn with_database(&self, name: &str) -> DatabaseUrl {
        let mut u = self.0.clone();
        u.set_path(&format!("/{name}"));
        DatabaseUrl(u)
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut u = self.0.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        f.write_str(u.as_str())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}
