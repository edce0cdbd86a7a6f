//! TLS to PostgreSQL, with libpq's `sslmode` and `sslrootcert` (docs/operations.md, "TLS to PostgreSQL").
//!
//! tokio-postgres only knows `sslmode` disable / prefer / require, and refuses the other
//! values and `sslrootcert` outright. So the store takes both out of the connection string
//! here, hands the rest to tokio-postgres with the matching transport mode, and brings the
//! certificate checks itself, with rustls (ring provider) through tokio-postgres-rustls:
//!
//! | sslmode | TLS | checks |
//! |---|---|---|
//! | `disable` | never | |
//! | `prefer` (default) | if the server offers it | none |
//! | `require` | always | none; the chain, as `verify-ca`, when `sslrootcert` is given |
//! | `verify-ca` | always | the chain up to a root |
//! | `verify-full` | always | the chain and the host name |
//!
//! Roots come from the PEM file `sslrootcert` names, or from the system's store when it is
//! absent or `system` (which, as in libpq 16, defaults to and requires `verify-full`). As in
//! libpq, connections over Unix sockets never use TLS, whatever the mode.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::{Host, SslMode as TransportMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values tally supports (`allow` is not one: it never helps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: use disable, prefer, require, verify-ca or \
                     verify-full"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// The operating system's store (rustls-native-certs).
    System,
    /// A PEM file of one or more certificates.
    File(PathBuf),
}

/// The TLS settings of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: SslMode,
    /// `None`: system roots, used only by `verify-ca` and `verify-full`.
    pub root_certs: Option<RootCerts>,
}

impl fmt::Display for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sslmode={}", self.mode.name())?;
        match &self.root_certs {
            Some(RootCerts::File(path)) => write!(f, ", sslrootcert={}", path.display()),
            Some(RootCerts::System) => write!(f, ", sslrootcert=system"),
            None => Ok(()),
        }
    }
}

/// Splits a connection string (URL or `key=value` form) into what tokio-postgres may parse
/// and the TLS options it cannot.
pub fn split_connection_string(url: &str) -> Result<(String, TlsOptions), String> {
    let (rest, mode, root) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url(url)?
    } else {
        split_key_values(url)?
    };
    let root_certs = root.map(|root| match root.as_str() {
        "system" => RootCerts::System,
        _ => RootCerts::File(PathBuf::from(root)),
    });
    let mode = match (mode, &root_certs) {
        (Some(mode), _) => SslMode::parse(&mode)?,
        (None, Some(RootCerts::System)) => SslMode::VerifyFull,
        (None, _) => SslMode::Prefer,
    };
    if root_certs == Some(RootCerts::System) && mode != SslMode::VerifyFull {
        // libpq 16: checking a public CA's chain without the host name proves nothing.
        return Err(format!(
            "sslrootcert=system requires sslmode=verify-full, not {}",
            mode.name()
        ));
    }
    Ok((rest, TlsOptions { mode, root_certs }))
}

type Split = (String, Option<String>, Option<String>);

/// `postgresql://...?sslmode=...&sslrootcert=...`: the two parameters leave the query.
fn split_url(url: &str) -> Result<Split, String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for param in query.split('&') {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match percent_decode(key)?.as_str() {
            "sslmode" => mode = Some(percent_decode(value)?),
            "sslrootcert" => root = Some(percent_decode(value)?),
            _ => kept.push(param),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in {text:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

/// `host=... sslmode=... sslrootcert='...'`: the two pairs are cut out of the string, the
/// rest is kept byte for byte. Values follow libpq: single-quoted (with `\'` and `\\`) or
/// bare up to the next blank, a backslash escaping the next character.
fn split_key_values(text: &str) -> Result<Split, String> {
    let (mut mode, mut root) = (None, None);
    let mut rest = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut kept_from = 0;
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(format!(
                "missing \"=\" after {key:?} in the connection string"
            ));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of {key:?}")),
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => continue,
        }
        rest.push_str(&text[kept_from..start]);
        kept_from = end;
    }
    rest.push_str(&text[kept_from..]);
    Ok((rest, mode, root))
}

/// What to connect with, for a parsed tokio-postgres config.
pub enum Connector {
    Plain,
    Rustls(MakeRustlsConnect),
}

impl TlsOptions {
    /// Sets the transport mode on `config` and builds the connector (reading the root
    /// certificates now, so a rotated file is picked up at the next connection).
    pub fn apply(&self, config: &mut tokio_postgres::Config) -> Result<Connector, String> {
        let only_unix_sockets = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| !matches!(host, Host::Tcp(_)));
        if self.mode == SslMode::Disable || only_unix_sockets {
            config.ssl_mode(TransportMode::Disable);
            return Ok(Connector::Plain);
        }
        config.ssl_mode(match self.mode {
            SslMode::Prefer => TransportMode::Prefer,
            _ => TransportMode::Require,
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, &self.root_certs) {
            (SslMode::Prefer, _) | (SslMode::Require, None) => Arc::new(Lenient {
                chain: None,
                algorithms,
            }),
            (SslMode::Require | SslMode::VerifyCa, roots) => Arc::new(Lenient {
                chain: Some(webpki_verifier(roots.as_ref(), &provider)?),
                algorithms,
            }),
            (_, roots) => webpki_verifier(roots.as_ref(), &provider)?,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("TLS set-up: {error}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Connector::Rustls(MakeRustlsConnect::new(config)))
    }
}

fn webpki_verifier(
    roots: Option<&RootCerts>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let store = match roots {
        None | Some(RootCerts::System) => system_roots()?,
        Some(RootCerts::File(path)) => file_roots(path)?,
    };
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|error| format!("TLS set-up: {error}"))
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _unparsable) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "no system root certificates found (install ca-certificates, or name a file with \
             sslrootcert){}{}",
            if errors.is_empty() { "" } else { ": " },
            errors.join("; ")
        ));
    }
    Ok(store)
}

fn file_roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let reading = |error: &dyn fmt::Display| format!("sslrootcert {}: {error}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| reading(&error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| reading(&error))?;
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|error| reading(&error))?;
    }
    if store.is_empty() {
        return Err(reading(&"no PEM certificate in the file"));
    }
    Ok(store)
}

/// The modes that check less than WebPKI's full check, as libpq does.
///
/// Without a chain verifier (`prefer`, and `require` without roots): encryption without
/// authentication. With one (`verify-ca`, and `require` with roots): the full WebPKI check,
/// less the host name; webpki checks the name only once the chain is trusted, so a name error
/// there means a trusted chain. Either way the handshake's signatures are checked, against
/// the key the server shows, with the provider's algorithms (as `WebPkiServerVerifier` does).
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsOptions) {
        split_connection_string(url).expect("a valid connection string")
    }

    fn options(mode: SslMode, root: Option<&str>) -> TlsOptions {
        TlsOptions {
            mode,
            root_certs: root.map(|root| match root {
                "system" => RootCerts::System,
                path => RootCerts::File(path.into()),
            }),
        }
    }

    #[test]
    fn without_ssl_settings_the_string_is_unchanged_and_the_mode_is_prefer() {
        for url in [
            "postgresql://u@h/db?application_name=x",
            "host=h user=u",
            "",
        ] {
            assert_eq!(split(url), (url.to_owned(), options(SslMode::Prefer, None)));
        }
    }

    #[test]
    fn url_parameters_leave_the_query_and_are_percent_decoded() {
        assert_eq!(
            split("postgresql://u:p@h:5432/db?sslmode=verify-full&connect_timeout=3&sslrootcert=%2Ftmp%2Fmy%20ca.pem"),
            (
                "postgresql://u:p@h:5432/db?connect_timeout=3".to_owned(),
                options(SslMode::VerifyFull, Some("/tmp/my ca.pem"))
            )
        );
        assert_eq!(
            split("postgres://h/db?sslmode=require"),
            (
                "postgres://h/db".to_owned(),
                options(SslMode::Require, None)
            )
        );
    }

    #[test]
    fn key_value_pairs_are_cut_out_and_quoted_values_unescaped() {
        assert_eq!(
            split(r"host=h sslmode = verify-ca user='a b' sslrootcert='/x/it\'s.pem' dbname=d"),
            (
                "host=h user='a b' dbname=d".to_owned(),
                options(SslMode::VerifyCa, Some("/x/it's.pem"))
            )
        );
        assert_eq!(
            split(r"sslrootcert=/a\ b.pem host=h"),
            (
                "host=h".to_owned(),
                options(SslMode::Prefer, Some("/a b.pem"))
            )
        );
    }

    #[test]
    fn sslrootcert_system_means_verify_full_and_refuses_weaker_modes() {
        assert_eq!(
            split("host=h sslrootcert=system").1,
            options(SslMode::VerifyFull, Some("system"))
        );
        let error = split_connection_string("host=h sslrootcert=system sslmode=require")
            .expect_err("weaker than verify-full");
        assert!(error.contains("verify-full"), "{error}");
    }

    #[test]
    fn unknown_modes_and_broken_strings_are_errors_that_say_why() {
        let error = split_connection_string("host=h sslmode=allow").expect_err("allow");
        assert!(error.contains("invalid sslmode \"allow\""), "{error}");
        assert!(split_connection_string("host=h sslmode").is_err());
        assert!(split_connection_string("host='h").is_err());
        assert!(split_connection_string("postgresql://h?sslrootcert=%zz").is_err());
    }

    #[test]
    fn unix_sockets_never_use_tls_even_with_verify_full() {
        let (rest, tls) = split("host=/run/postgresql user=u sslmode=verify-full");
        let mut config: tokio_postgres::Config = rest.parse().expect("config");
        assert!(matches!(tls.apply(&mut config), Ok(Connector::Plain)));
        assert_eq!(config.get_ssl_mode(), TransportMode::Disable);
    }

    #[test]
    fn a_missing_root_file_is_named_in_the_error() {
        let (rest, tls) =
            split("host=db.example user=u sslmode=verify-full sslrootcert=/nonexistent/ca.pem");
        let mut config: tokio_postgres::Config = rest.parse().expect("config");
        let error = tls.apply(&mut config).err().expect("no such file");
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
