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
    /// The same URL with libpq parameter `key` set to `value`, unless the
    /// URL already sets it (the operator's choice wins).
    pub fn with_default_param(&self, key: &str, value: &str) -> DatabaseUrl {
        if self.0.query_pairs().any(|(k, _)| k == key) {
            return self.clone();
        }
        let mut u = self.0.clone();
        u.query_pairs_mut().append_pair(key, value);
        DatabaseUrl(u)
    }

    /// The same server, another database (to create this one).
    pub fn with_database(&self, name: &str) -> DatabaseUrl {
        let mut u = self.0.clone();
        u.set_path(&format!("/{name}"));
        DatabaseUrl(u)
    }
}

impl DatabaseUrl {
    /// `host:port` of the server, for messages (no user, no password).
    pub fn server(&self) -> String {
        let port = self.0.port().unwrap_or(5432);
        match self.0.host_str() {
            Some(h) if !h.is_empty() => format!("{h}:{port}"),
            _ => format!("the local socket (port {port})"),
        }
    }

    /// `text` with this URL's password masked wherever it appears, for
    /// messages that quote what the server or the driver said.
    pub fn redact(&self, text: &str) -> String {
        let Some(raw) = self.0.password().filter(|p| !p.is_empty()) else {
            return text.to_owned();
        };
        let decoded = percent_decode(raw);
        let mut out = text.replace(raw, "***");
        if !decoded.is_empty() {
            out = out.replace(&decoded, "***");
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_named_without_user_or_password() {
        let u = DatabaseUrl::parse("postgres://u:pw@db.example:5433/x").unwrap();
        assert_eq!(u.server(), "db.example:5433");
        let u = DatabaseUrl::parse("postgresql://127.0.0.1/x").unwrap();
        assert_eq!(u.server(), "127.0.0.1:5432");
        let u = DatabaseUrl::parse("postgres://[::1]:6000/x").unwrap();
        assert_eq!(u.server(), "[::1]:6000");
    }

    #[test]
    fn a_default_parameter_is_added_only_when_the_url_has_none() {
        let u = DatabaseUrl::parse("postgres://u@h/x").unwrap();
        let t = u.with_default_param("connect_timeout", "2");
        assert_eq!(t.expose(), "postgres://u@h/x?connect_timeout=2");
        assert_eq!(t.database_name(), "x");
        let u = DatabaseUrl::parse("postgres://u@h/x?sslmode=require&connect_timeout=9").unwrap();
        assert_eq!(u.with_default_param("connect_timeout", "2"), u);
        let u = DatabaseUrl::parse("postgres://u@h/x?sslmode=require").unwrap();
        assert_eq!(
            u.with_default_param("connect_timeout", "2").expose(),
            "postgres://u@h/x?sslmode=require&connect_timeout=2"
        );
    }

    #[test]
    fn redact_masks_the_password_raw_and_decoded() {
        let u = DatabaseUrl::parse("postgres://u:p%40ss-w0rd@h/x").unwrap();
        assert_eq!(
            u.redact("bad token p%40ss-w0rd or p@ss-w0rd"),
            "bad token *** or ***"
        );
        let u = DatabaseUrl::parse("postgres://u@h/x").unwrap();
        assert_eq!(u.redact("nothing to hide"), "nothing to hide");
    }
}
