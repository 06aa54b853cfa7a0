//! How every pool of a HAP process opens its PostgreSQL connections to be taken.

use std::time::Duration;

use futures::FutureExt;
use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;

/// A connection idle for this long is pinged before it is used; one used more recently is not.
const PINGED_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The options every pool of HAP starts from. By default sqlx pings each connection as it is
/// taken from the pool, one more round trip before every statement (and a wait for it on the
/// caller's path); sqlx also pings each one as it goes back, which it always does. So a
/// connection that went back a moment ago was tested then: HAP pings only those that have sat
/// idle for [`PINGED_AFTER_IDLE`] (the server may have restarted since), and a dead one is
/// dropped and the next one taken, as sqlx's own test does.
pub fn options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            async move {
                if meta.idle_for >= PINGED_AFTER_IDLE {
                    connection.ping().await?;
                }
                Ok(true)
            }
            .boxed()
        })
}
