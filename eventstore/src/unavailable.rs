//! Which database errors mean "PostgreSQL cannot be reached or is going away" rather than
//! "this request or this code is wrong". It is the one place that tells them apart: the HTTP
//! layer answers the first kind with 503 and `Retry-After` (and the second with 500), and any
//! other part that needs to tell an outage from a bug should ask here too.
//!
//! A restart of PostgreSQL under load shows every one of these: a fast shutdown ends each
//! session with `57P01`, an immediate one resets the connections, a connection attempt while
//! the server shuts down or recovers gets `57P03`, and a connection refused while it is down
//! surfaces as an I/O error or, once the pool gave up waiting, as a pool timeout.

/// SQLSTATE codes that mean the server ended the session or cannot take one now.
const UNAVAILABLE_CODES: &[&str] = &[
    // admin_shutdown: "terminating connection due to administrator command" (fast shutdown,
    // pg_terminate_backend).
    "57P01",
    // crash_shutdown: another backend crashed and the server is resetting every session.
    "57P02",
    // cannot_connect_now: the server is starting up, shutting down or in recovery.
    "57P03",
    // too_many_connections: no connection slot is free (other clients, or a server restarted
    // with sessions still draining).
    "53300",
];

/// Class 08, connection exceptions (`08000`, `08003`, `08006`, `08001`, `08004`, `08P01`, …).
const CONNECTION_EXCEPTION_CLASS: &str = "08";

/// Whether `error` means the database is unavailable for now: a request that failed with it
/// may succeed when repeated later, and nothing about the request itself was at fault.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        // Refused, reset, aborted, broken pipe, unexpected end of stream, timed out: every I/O
        // error on a database connection is the connection failing, whatever its kind.
        sqlx::Error::Io(_) => true,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        // The driver read something it did not expect: the conversation with the server broke
        // off (a session ended by the server in the middle of an exchange). The connection is
        // discarded; a new one starts a clean conversation.
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            UNAVAILABLE_CODES.contains(&code.as_ref())
                || code.starts_with(CONNECTION_EXCEPTION_CLASS)
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;
    use std::io;

    use sqlx::error::{DatabaseError, ErrorKind};

    use super::*;

    /// A database error with a SQLSTATE, as the server sends one.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl StdError for Sqlstate {}

    impl DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn database(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Sqlstate(code)))
    }

    fn io(kind: io::ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(io::Error::new(kind, "connection"))
    }

    #[test]
    fn a_server_ending_or_refusing_sessions_is_unavailable() {
        for code in ["57P01", "57P02", "57P03", "53300"] {
            assert!(is_unavailable(&database(code)), "{code}");
        }
    }

    #[test]
    fn every_connection_exception_is_unavailable() {
        for code in [
            "08000", "08003", "08006", "08001", "08004", "08007", "08P01",
        ] {
            assert!(is_unavailable(&database(code)), "{code}");
        }
    }

    #[test]
    fn refused_reset_and_cut_connections_are_unavailable() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
        ] {
            assert!(is_unavailable(&io(kind)), "{kind:?}");
        }
    }

    #[test]
    fn an_exhausted_or_closed_pool_and_a_broken_conversation_are_unavailable() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::PoolClosed));
        assert!(is_unavailable(&sqlx::Error::Protocol(
            "expecting ParseComplete but received ReadyForQuery".into()
        )));
    }

    #[test]
    fn errors_of_the_request_or_the_code_are_not_unavailable() {
        for code in [
            "23505", // unique_violation
            "23502", // not_null_violation
            "40001", // serialization_failure
            "40P01", // deadlock_detected
            "55P03", // lock_not_available
            "57014", // query_canceled (statement or lock timeout)
            "42P01", // undefined_table
            "22P02", // invalid_text_representation
        ] {
            assert!(!is_unavailable(&database(code)), "{code}");
        }
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::ColumnNotFound("x".into())));
        assert!(!is_unavailable(&sqlx::Error::Decode("bad".into())));
    }
}
