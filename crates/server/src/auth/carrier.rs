//! Where a request carries its token, IO-free: string slices in, the token out.
//!
//! Browsers cannot set `Authorization` on a WebSocket, so a token travels either as a
//! subprotocol (`new WebSocket(url, ["bearer", token])`, which sends
//! `Sec-WebSocket-Protocol: bearer, <token>`) or in the query (`?token=<token>`). The
//! subprotocol keeps the token out of access logs; the query works with every client.
//! A server that accepts the subprotocol carrier must select [`BEARER_SUBPROTOCOL`] in
//! its `101` response, or the browser fails the connection.

/// The subprotocol that precedes the token in `Sec-WebSocket-Protocol`, and the one
/// the server selects in its response.
pub const BEARER_SUBPROTOCOL: &str = "bearer";

/// The token from `Sec-WebSocket-Protocol` values: the entry right after the first
/// `bearer` entry.
///
/// `values` are the header's values, one per header line; each may hold several
/// comma-separated entries, and entries are trimmed. `bearer` matches case-sensitively,
/// as subprotocol names do. `None` if there is no `bearer` entry or nothing non-empty
/// follows it.
pub fn bearer_from_subprotocols<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut entries = values
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim);
    while let Some(entry) = entries.next() {
        if entry == BEARER_SUBPROTOCOL {
            return entries.next().filter(|token| !token.is_empty());
        }
    }
    None
}

/// The value of the `token` parameter of a URL query (`a=1&token=xyz&b=2`, with or
/// without the leading `?`).
///
/// A JWT is base64url and dots, which need no percent-encoding, so a value with `%` is
/// refused rather than decoded. `None` as well if the parameter is absent, empty, or
/// given more than once (which two parsers could read differently).
pub fn token_from_query(query: &str) -> Option<&str> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut found = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "token" {
            if found.is_some() {
                return None;
            }
            found = Some(value);
        }
    }
    found.filter(|value| !value.is_empty() && !value.contains('%'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_found_in_one_value_or_across_header_lines() {
        assert_eq!(bearer_from_subprotocols(["bearer, a.b.c"]), Some("a.b.c"));
        assert_eq!(bearer_from_subprotocols(["bearer,a.b.c"]), Some("a.b.c"));
        assert_eq!(
            bearer_from_subprotocols(["  chat ,\tbearer ,  a.b.c  , other"]),
            Some("a.b.c")
        );
        assert_eq!(bearer_from_subprotocols(["bearer", "a.b.c"]), Some("a.b.c"));
        assert_eq!(
            bearer_from_subprotocols(["chat", "bearer", " a.b.c, x"]),
            Some("a.b.c")
        );
        assert_eq!(
            bearer_from_subprotocols(vec!["chat, bearer", "a.b.c"].into_iter()),
            Some("a.b.c")
        );
    }

    #[test]
    fn hostile_subprotocol_headers_yield_nothing() {
        let none: [&str; 0] = [];
        assert_eq!(bearer_from_subprotocols(none), None);
        assert_eq!(bearer_from_subprotocols([""]), None);
        assert_eq!(bearer_from_subprotocols(["bearer"]), None);
        assert_eq!(bearer_from_subprotocols(["bearer,"]), None);
        assert_eq!(bearer_from_subprotocols(["bearer, ,a.b.c"]), None);
        assert_eq!(bearer_from_subprotocols(["bearer", ""]), None);
        assert_eq!(bearer_from_subprotocols(["a.b.c"]), None);
        assert_eq!(bearer_from_subprotocols(["Bearer, a.b.c"]), None);
        assert_eq!(bearer_from_subprotocols(["bearerx, a.b.c"]), None);
        assert_eq!(bearer_from_subprotocols([",,,,"]), None);
        let many = ",".repeat(100_000);
        assert_eq!(bearer_from_subprotocols([many.as_str()]), None);
        // Only the first `bearer` counts.
        assert_eq!(
            bearer_from_subprotocols(["bearer, x, bearer, y"]),
            Some("x")
        );
        assert_eq!(bearer_from_subprotocols(["bearer, bearer"]), Some("bearer"));
    }

    #[test]
    fn token_is_found_in_the_query() {
        assert_eq!(token_from_query("token=a.b.c"), Some("a.b.c"));
        assert_eq!(token_from_query("?token=a.b.c"), Some("a.b.c"));
        assert_eq!(token_from_query("a=1&token=xyz&b=2"), Some("xyz"));
        assert_eq!(token_from_query("a=1&b=2&token=x_-y.z"), Some("x_-y.z"));
        assert_eq!(token_from_query("token=a=b"), Some("a=b"));
    }

    #[test]
    fn hostile_queries_yield_nothing() {
        assert_eq!(token_from_query(""), None);
        assert_eq!(token_from_query("?"), None);
        assert_eq!(token_from_query("token"), None);
        assert_eq!(token_from_query("token="), None);
        assert_eq!(token_from_query("tokens=a.b.c"), None);
        assert_eq!(token_from_query("xtoken=a.b.c"), None);
        assert_eq!(token_from_query("Token=a.b.c"), None);
        assert_eq!(token_from_query("token=a%2Eb.c"), None);
        assert_eq!(token_from_query("token=a.b.c&token=d.e.f"), None);
        assert_eq!(token_from_query("token=a.b.c&token="), None);
        assert_eq!(token_from_query("&&&=&="), None);
        let many = "&".repeat(100_000);
        assert_eq!(token_from_query(&many), None);
        assert_eq!(token_from_query("t%6Fken=a.b.c"), None);
    }
}
