//! Who is calling, decided once per request before routing: an API key (`Authorization: Bearer
//! kura_…`) or an OpenID Connect JWT (`Authorization: Bearer` three dot-separated parts; told
//! apart by form), else a mapped client certificate, else — only where authentication is not
//! required — the local principal. Also the client's address and scheme, read from a trusted
//! proxy's forwarding headers (`--behind-proxy`) and from nobody else's.
//!
//! Nothing here logs a credential: failures are logged with the client address and a reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Request, header};

use crate::auth::jwt::{JwtVerifier, looks_like_jwt};
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

/// What a request presents to authenticate, read before any await (the request stays put).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The `Authorization` header, when there is one.
    authorization: Option<String>,
    certificate: Option<Principal>,
    /// The client's address (see [`Access::client_address`]).
    pub address: IpAddr,
}

/// A refused authentication: the error to answer, and, when credentials were presented and
/// failed, why (for the audit trail; never the credential).
#[derive(Debug)]
pub struct AuthFailure {
    pub error: Error,
    pub reason: Option<&'static str>,
}

pub struct Access {
    keys: Arc<KeyStore>,
    jwt: Option<JwtVerifier>,
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
    pub fn new(keys: Arc<KeyStore>, security: &Security) -> Result<Access, String> {
        let jwt = security.oidc.clone().map(JwtVerifier::new).transpose()?;
        Ok(Access {
            keys,
            jwt,
            limiter: FailureLimiter::default(),
            require_auth: security.require_auth,
            trusted_proxy: security.trusted_proxy,
        })
    }

    /// The JWT verifier, when OpenID Connect is configured.
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
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

    /// What `request` presents to authenticate.
    pub fn credentials<B>(&self, request: &Request<B>) -> Credentials {
        Credentials {
            authorization: request
                .headers()
                .get(header::AUTHORIZATION)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
            certificate: request.extensions().get::<ConnectionInfo>().and_then(|c| c.certificate.clone()),
            address: self.client_address(request),
        }
    }

    /// The caller, or 401 (no or bad credentials), or 429 (this address failed too often).
    pub async fn authenticate(&self, credentials: Credentials) -> Result<Principal, AuthFailure> {
        let refuse = |error: Error| AuthFailure { error, reason: None };
        let Some(authorization) = credentials.authorization else {
            return match credentials.certificate {
                Some(principal) => Ok(principal),
                None if self.require_auth => Err(refuse(Error::new(
                    ErrorKind::Unauthorized,
                    "authentication required: send an API key or an OpenID Connect token as `Authorization: \
                     Bearer <token>`, or a client certificate",
                ))),
                None => Ok(Principal::local()),
            };
        };
        let address = credentials.address;
        if let Err(wait) = self.limiter.check(address) {
            return Err(refuse(Error::new(
                ErrorKind::TooManyRequests,
                format!("too many failed authentications from this address; retry in {wait} s"),
            )));
        }
        let token = {
            let value = authorization.trim();
            value
                .split_once(' ')
                .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()))
        };
        let outcome: Result<Principal, &'static str> = match (token, &self.jwt) {
            (Some(token), Some(jwt)) if looks_like_jwt(token) => jwt.verify(token).await.map_err(jwt_reason),
            (Some(token), _) => self.keys.verify(token).map_err(|rejected| match rejected {
                Rejected::Malformed => "malformed",
                Rejected::Invalid => "invalid api key",
            }),
            (None, _) => Err("not a bearer token"),
        };
        outcome.map_err(|reason| {
            self.limiter.failed(address);
            tracing::info!(client = %address, reason, "authentication failed");
            AuthFailure {
                error: Error::new(
                    ErrorKind::InvalidToken,
                    format!("the bearer token is not valid ({reason}): an unknown, revoked or malformed API key, or a JWT that failed verification"),
                ),
                reason: Some(reason),
            }
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
            Some((id, owner)) => Ok(Principal::link(&id, &owner)),
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

/// A JWT rejection as a short reason (logs, the audit trail and the 401's message).
fn jwt_reason(rejected: crate::auth::jwt::JwtRejected) -> &'static str {
    use crate::auth::jwt::JwtRejected::*;
    match rejected {
        Oversize => "token too large",
        Malformed => "malformed token",
        Algorithm => "algorithm not accepted",
        UnknownKey => "unknown signing key",
        BadSignature => "bad signature",
        Expired => "expired",
        NotYetValid => "not yet valid",
        WrongIssuer => "wrong issuer",
        WrongAudience => "wrong audience",
        Claims => "subject or institution claim missing",
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
