//! Reaching RabbitMQ: the nodes of one cluster as a list of AMQP URLs, and [`connect`], through
//! which every connection HAP makes is opened. It tries the nodes in order and returns the first
//! that answers. Every HAP connection that dies is opened again through it (none is
//! auto-recovered by lapin, which would only retry the same node), so a process whose node goes
//! moves on to the next one.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::uri::AMQPUri;

/// How long one node may take to accept a connection (TCP and the AMQP handshake) before the
/// next is tried: a node that hangs must not stall every reconnection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The AMQP URLs of the nodes of one RabbitMQ cluster, at least one, in the order they are
/// tried: what `HAP_AMQP_URL` holds, comma-separated. Shown (`Display`, `Debug`) with `***`
/// for every password.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrls(Vec<Node>);

#[derive(Clone, PartialEq, Eq)]
struct Node {
    uri: AMQPUri,
    /// The URL as given, its password replaced: for logs and errors.
    shown: String,
}

/// Why a list of AMQP URLs was refused. Never quotes a password.
#[derive(Debug, thiserror::Error)]
#[error("AMQP URL {position} of {count}: {reason}")]
pub struct InvalidAmqpUrl {
    position: usize,
    count: usize,
    reason: String,
}

impl AmqpUrls {
    /// How many nodes there are (at least one).
    pub fn node_count(&self) -> usize {
        self.0.len()
    }
}

impl FromStr for AmqpUrls {
    type Err = InvalidAmqpUrl;

    fn from_str(list: &str) -> Result<Self, InvalidAmqpUrl> {
        let parts: Vec<&str> = list.split(',').map(str::trim).collect();
        let count = parts.len();
        parts
            .iter()
            .enumerate()
            .map(|(index, part)| {
                Node::parse(part).map_err(|reason| InvalidAmqpUrl {
                    position: index + 1,
                    count,
                    reason,
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl Node {
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty".into());
        }
        // The url crate's errors name what is wrong, never the text itself.
        let mut url = url::Url::parse(text).map_err(|e| e.to_string())?;
        if !matches!(url.scheme(), "amqp" | "amqps") {
            return Err("not an amqp:// or amqps:// URL".into());
        }
        let host = match url.host() {
            Some(url::Host::Domain(domain)) => domain.to_owned(),
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => address.to_string(),
            None => return Err("no host".into()),
        };
        if url.password().is_some() {
            // Infallible for a URL with a host, which this one has.
            let _ = url.set_password(Some("***"));
        }
        let shown = url.to_string();
        let mut uri = AMQPUri::from_str(text).map_err(|e| e.replace(text, &shown))?;
        // lapin's parser takes the host only when it is a domain name, and puts `localhost` in
        // place of an IP address.
        uri.authority.host = host;
        Ok(Self { uri, shown })
    }
}

impl fmt::Display for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<&str> = self.0.iter().map(|node| node.shown.as_str()).collect();
        f.write_str(&shown.join(","))
    }
}

impl fmt::Debug for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrls({self})")
    }
}

/// Opens a connection named `name` to the first node of `urls` that accepts one within
/// [`CONNECT_TIMEOUT`], trying them in order; when none does, the last node's error.
pub async fn connect(urls: &AmqpUrls, name: &str) -> lapin::Result<lapin::Connection> {
    let mut last = None;
    for node in &urls.0 {
        let properties = lapin::ConnectionProperties::default().with_connection_name(name.into());
        let attempt = lapin::Connection::connect_uri(node.uri.clone(), properties);
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => error,
            Err(_) => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {CONNECT_TIMEOUT:?}"),
            )
            .into(),
        };
        if urls.node_count() > 1 {
            tracing::debug!(node = %node.shown, %error, connection = name, "a RabbitMQ node did not answer; trying the next");
        }
        last = Some(error);
    }
    Err(last.expect("a list of AMQP URLs is never empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_parsed_in_order_and_shown_without_passwords() {
        let urls: AmqpUrls =
            "amqp://guest:secret@127.0.0.1:5681/%2f, amqp://u:p%40ss@rabbit-2.local:5682/hap"
                .parse()
                .unwrap();

        assert_eq!(urls.node_count(), 2);
        let shown = urls.to_string();
        assert_eq!(
            shown,
            "amqp://guest:***@127.0.0.1:5681/%2f,amqp://u:***@rabbit-2.local:5682/hap"
        );
        assert!(!format!("{urls:?}").contains("secret"));
        assert_eq!(urls.0[0].uri.authority.userinfo.password, "secret");
        assert_eq!(urls.0[1].uri.authority.userinfo.password, "p@ss");
        assert_eq!(urls.0[1].uri.vhost, "hap");
    }

    #[test]
    fn an_ip_address_is_kept_as_the_host() {
        let urls: AmqpUrls = "amqp://10.1.2.3:5672,amqp://[::1]:5673".parse().unwrap();

        assert_eq!(urls.0[0].uri.authority.host, "10.1.2.3");
        assert_eq!(urls.0[1].uri.authority.host, "::1");
        assert_eq!(urls.0[1].uri.authority.port, 5673);
    }

    #[test]
    fn a_bad_url_is_named_by_its_position_without_its_password() {
        for (list, expected) in [
            ("", "AMQP URL 1 of 1: empty"),
            ("amqp://a:secret@h:5672,", "AMQP URL 2 of 2: empty"),
            (
                "amqp://a:secret@h:99999",
                "AMQP URL 1 of 1: invalid port number",
            ),
            (
                "http://a:secret@h",
                "AMQP URL 1 of 1: not an amqp:// or amqps:// URL",
            ),
            (
                "amqp://a:secret@h/?heartbeat=soon",
                "AMQP URL 1 of 1: invalid digit found in string",
            ),
        ] {
            let error = list.parse::<AmqpUrls>().unwrap_err().to_string();
            assert_eq!(error, expected, "{list}");
        }
    }
}
