//! The vendor API token shared by every process. 大麦家 invalidates every
//! older token at each login, so processes must not log in on their own: one
//! takes the login lease, logs in, stores the token; the others wait for it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::db::schema::vendor_tokens;
use crate::secret::Secret;
use crate::vendors::Vendor;

/// The token stored by the latest login, if any.
pub fn stored(conn: &mut PgConnection, vendor: Vendor) -> QueryResult<Option<Secret>> {
    let t: Option<Option<String>> = vendor_tokens::table
        .find(vendor.as_str())
        .select(vendor_tokens::token)
        .first(conn)
        .optional()?;
    Ok(t.flatten().map(Secret::new))
}

/// Try to take the login lease. `Ok(true)` means this caller may log in now.
pub fn acquire_login(
    conn: &mut PgConnection,
    vendor: Vendor,
    owner: &str,
    lease: Duration,
) -> QueryResult<bool> {
    let now = Utc::now();
    let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
    use diesel::sql_types::{Text, Timestamptz};
    let n = diesel::sql_query(
        "INSERT INTO vendor_tokens (vendor, login_owner, login_lease_until) VALUES ($1, $2, $3) \
         ON CONFLICT (vendor) DO UPDATE SET login_owner = $2, login_lease_until = $3 \
         WHERE vendor_tokens.login_lease_until IS NULL OR vendor_tokens.login_lease_until < $4",
    )
    .bind::<Text, _>(vendor.as_str())
    .bind::<Text, _>(owner)
    .bind::<Timestamptz, _>(until)
    .bind::<Timestamptz, _>(now)
    .execute(conn)?;
    Ok(n == 1)
}

/// Store a new token and give the lease back.
pub fn store(
    conn: &mut PgConnection,
    vendor: Vendor,
    owner: &str,
    token: &Secret,
) -> QueryResult<usize> {
    diesel::update(
        vendor_tokens::table
            .find(vendor.as_str())
            .filter(vendor_tokens::login_owner.eq(owner)),
    )
    .set((
        vendor_tokens::token.eq(token.expose()),
        vendor_tokens::obtained_at.eq(Utc::now()),
        vendor_tokens::login_owner.eq(None::<String>),
        vendor_tokens::login_lease_until.eq(None::<DateTime<Utc>>),
    ))
    .execute(conn)
}

/// Give the lease back without a token (the login failed).
pub fn release_login(conn: &mut PgConnection, vendor: Vendor, owner: &str) -> QueryResult<usize> {
    diesel::update(
        vendor_tokens::table
            .find(vendor.as_str())
            .filter(vendor_tokens::login_owner.eq(owner)),
    )
    .set((
        vendor_tokens::login_owner.eq(None::<String>),
        vendor_tokens::login_lease_until.eq(None::<DateTime<Utc>>),
    ))
    .execute(conn)
}
