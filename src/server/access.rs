//! Who is calling, decided once per request before routing: an API key (`Authorization: Bearer
//! kura_…`), else a mapped client certificate, else — only where authentication is not
//! required — the local principal. Also the client's address and scheme, read from a trusted
//! proxy's forwarding headers (`--behind-proxy`) and from nobody else's.
//!
//! Nothing here logs a credential: failures are logged with the client address and a reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Request, header};

use crate::auth::keys::{KeyStore, Rejected};
use crate::auth::limiter::FailureLimiter;
use crate::auth::{Principal, Role};
use crate::config::Security;
use crate::error::{Error, ErrorKind};

/// What the accept loop knows about a connection (a request extension).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// The connection is TLS (Kura terminated it).
    pub tls: bool,
    /// The principal of a verified, mapped client certificate.
    pub certificate: Option<Principal>,
}

pub struct Access {
    keys: Arc<KeyStore>,
    limiter: FailureLimiter,
    require_auth: bool,
    trusted_proxy: Option<IpAddr>,
}

/// The address in one `for=` of a `Forwarded` element (RFC 7239 §6: `192.0.2.1`,
/// `"[2001:db8::1]:4711"`, …); obfuscated and unknown identifiers give `None`.
fn forwarded_for(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(v6) = node.strip_prefix('[') {
        return v6.split(']').next()?.parse().ok();
    }
    node.parse().ok().or_else(|| node.rsplit_once(':')?.0.parse().ok())
}

impl Access {
    pub fn new(keys: Arc<KeyStore>, security: &Security) -> Access {
        Access {
            keys,
            limiter: FailureLimiter::default(),
            require_auth: security.require_auth,
            trusted_proxy: security.trusted_proxy,
        }
    }

    /// Whether the request came from the `--behind-proxy` address.
    pub fn from_trusted_proxy<B>(&self, request: &Request<B>) -> bool {
        let peer = request.extensions().get::<ConnectionInfo>().map(|c| c.peer.ip());
        peer.is_some() && peer == self.trusted_proxy
    }

    /// The client's address: the peer, or, for a request from the trusted proxy, the address
    /// that proxy appended (the last in X-Forwarded-For, else the last `for=` of Forwarded;
    /// earlier entries come from the client and are not believed).
    pub fn client_address<B>(&self, request: &Request<B>) -> IpAddr {
        let peer = request.extensions().get::<ConnectionInfo>().map(|c| c.peer.ip());
        let peer = peer.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        if !self.from_trusted_proxy(request) {
            return peer;
        }
        let headers = request.headers();
        let last_header = |name: &str| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).next_back();
        let from_xff = last_header("x-forwarded-for").and_then(|v| v.rsplit(',').next()).and_then(forwarded_for);
        let from_forwarded = || {
            let element = last_header("forwarded")?.rsplit(',').next()?;
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, value)| forwarded_for(value))
        };
        from_xff.or_else(from_forwarded).unwrap_or(peer)
    }

    /// `https` when Kura terminated TLS, or the trusted proxy says the client used it.
    pub fn scheme<B>(&self, request: &Request<B>) -> &'static str {
        if request.extensions().get::<ConnectionInfo>().is_some_and(|c| c.tls) {
            return "https";
        }
        let headers = request.headers();
        let proto = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).map(str::to_string).or_else(|| {
            let element = headers.get("forwarded")?.to_str().ok()?.rsplit(',').next()?.to_string();
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("proto"))
                .map(|(_, value)| value.trim().trim_matches('"').to_string())
        });
        if self.from_trusted_proxy(request) && proto.is_some_and(|p| p.trim().eq_ignore_ascii_case("https")) {
            "https"
        } else {
            "http"
        }
    }

    /// The caller, or 401 (no or bad credentials), or 429 (this address failed too often).
    pub fn authenticate<B>(&self, request: &Request<B>) -> Result<Principal, Error> {
        let certificate = request.extensions().get::<ConnectionInfo>().and_then(|c| c.certificate.clone());
        let Some(authorization) = request.headers().get(header::AUTHORIZATION) else {
            return match certificate {
                Some(principal) => Ok(principal),
                None if self.require_auth => Err(Error::new(
                    ErrorKind::Unauthorized,
                    "authentication required: send an API key as `Authorization: Bearer <key>`, or a client \
                     certificate",
                )),
                None => Ok(Principal::local()),
            };
        };
        let address = self.client_address(request);
        if let Err(wait) = self.limiter.check(address) {
            return Err(Error::new(
                ErrorKind::TooManyRequests,
                format!("too many failed authentications from this address; retry in {wait} s"),
            ));
        }
        let token = authorization.to_str().ok().and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let outcome = match token {
            Some(token) => self.keys.verify(token),
            None => Err(Rejected::Malformed),
        };
        outcome.map_err(|rejected| {
            self.limiter.failed(address);
            tracing::info!(client = %address, reason = ?rejected, "authentication failed");
            Error::new(ErrorKind::Unauthorized, "the credentials are not valid (unknown, revoked or malformed API key)")
        })
    }

    /// The principal of a share link's token (the link is its own credential; an
    /// `Authorization` header beside it is not looked at). An unknown, expired or revoked token
    /// gets the 404 of an unknown resource, so no answer tells them apart, and counts as a failed
    /// authentication for the address's rate limit. The token is never logged.
    pub fn authenticate_link<B>(
        &self,
        request: &Request<B>,
        shares: &crate::archive::ShareStore,
        token: &str,
    ) -> Result<Principal, Error> {
        let address = self.client_address(request);
        if let Err(wait) = self.limiter.check(address) {
            return Err(Error::new(
                ErrorKind::TooManyRequests,
                format!("too many failed authentications from this address; retry in {wait} s"),
            ));
        }
        match shares.link_id(token)? {
            Some(id) => Ok(Principal::link(&id)),
            None => {
                self.limiter.failed(address);
                tracing::info!(client = %address, "share link not valid (unknown, expired or revoked)");
                Err(Error::not_found("no such DICOMweb resource"))
            }
        }
    }

    /// 403 unless `principal` holds `role`.
    pub fn authorize(principal: &Principal, role: Option<Role>) -> Result<(), Error> {
        match role {
            Some(role) if !principal.has(role) => Err(Error::new(
                ErrorKind::Forbidden,
                format!("this needs the {role} role; the caller holds {}", principal.roles),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_nodes() {
        assert_eq!(forwarded_for("192.0.2.60"), Some("192.0.2.60".parse().unwrap()));
        assert_eq!(forwarded_for("\"[2001:db8:cafe::17]:4711\""), Some("2001:db8:cafe::17".parse().unwrap()));
        assert_eq!(forwarded_for("192.0.2.43:47011"), Some("192.0.2.43".parse().unwrap()));
        assert_eq!(forwarded_for("_hidden"), None);
        assert_eq!(forwarded_for("unknown"), None);
    }
}
