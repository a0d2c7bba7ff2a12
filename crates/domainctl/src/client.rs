//! Connections to the domain-manager replicas: endpoint validation, TLS settings, and the
//! failover loop that sends each call to the first replica able to serve it.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use domain_proto::manager::admin::v1::domain_admin_service_client::DomainAdminServiceClient;
use domain_proto::sequencer::admin::v1::sequencer_admin_service_client::SequencerAdminServiceClient;
use domain_tls::{ClientTlsFiles, client_tls_config};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::error::{
    ACTIVE_REPLICA_KEY, CliError, DM_NOT_ACTIVE, ERROR_CODE_KEY, FailedAttempt, ServerError,
    error_chain, metadata_str, sanitize,
};

/// The generated admin client over a tonic channel.
pub type AdminClient = DomainAdminServiceClient<Channel>;

/// The sequencer's admin client (pruning), over a tonic channel.
pub type SequencerAdminClient = SequencerAdminServiceClient<Channel>;

/// Domain-manager admin client with our response size limit.
fn admin_client(channel: Channel) -> AdminClient {
    AdminClient::new(channel).max_decoding_message_size(MAX_RESPONSE_SIZE)
}

/// Sequencer admin client with our response size limit.
fn sequencer_admin_client(channel: Channel) -> SequencerAdminClient {
    SequencerAdminClient::new(channel).max_decoding_message_size(MAX_RESPONSE_SIZE)
}

/// Largest response accepted; participant lists of big domains exceed tonic's 4 MiB default.
const MAX_RESPONSE_SIZE: usize = 64 * 1024 * 1024;

/// How many replicas named by `domain-active-replica` one call may add to the list, so
/// replicas pointing at each other (or a hostile one inventing URLs) cannot loop forever.
const MAX_REDIRECTS: usize = 4;

/// Splits, trims, validates and de-duplicates endpoint URLs. Each value may hold a
/// comma-separated list (the `DOMAINCTL_ENDPOINT` form); empty items are skipped. The result
/// keeps the given order and is never empty.
pub fn parse_endpoints(values: &[String]) -> Result<Vec<String>, CliError> {
    let mut endpoints: Vec<String> = Vec::new();
    for item in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let url = canonical_endpoint(item)
            .map_err(|reason| CliError::Usage(format!("invalid endpoint {item:?}: {reason}")))?;
        if !endpoints.contains(&url) {
            endpoints.push(url);
        }
    }
    if endpoints.is_empty() {
        return Err(CliError::Usage(
            "no endpoint given; pass --endpoint <URL> or set DOMAINCTL_ENDPOINT".to_owned(),
        ));
    }
    Ok(endpoints)
}

/// Checks an endpoint URL and returns its canonical `scheme://host:port` form, so the same
/// replica written two ways (trailing slash, upper-case scheme) is tried once.
pub fn canonical_endpoint(url: &str) -> Result<String, String> {
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| error_chain(&e))?;
    let uri = endpoint.uri();
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => "http",
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        _ => return Err("must start with http:// or https://".to_owned()),
    };
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| "missing host".to_owned())?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must not have a path or query (expected scheme://host:port)".to_owned());
    }
    Ok(format!("{scheme}://{authority}"))
}

fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// Builds the client TLS settings from `--ca`/`--cert`/`--key`, checking the files now so a
/// bad file is a usage error naming it rather than a handshake failure per endpoint.
///
/// Without `--ca` there is no TLS (system roots are never trusted), so an https endpoint
/// without `--ca` is a usage error.
pub fn load_tls(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    endpoints: &[String],
) -> Result<Option<ClientTlsConfig>, CliError> {
    match (cert, key) {
        (Some(_), None) => {
            return Err(CliError::Usage(
                "--cert needs --key (mutual TLS uses both); set both or neither".to_owned(),
            ));
        }
        (None, Some(_)) => {
            return Err(CliError::Usage(
                "--key needs --cert (mutual TLS uses both); set both or neither".to_owned(),
            ));
        }
        _ => {}
    }
    let Some(ca) = ca else {
        if cert.is_some() {
            return Err(CliError::Usage(
                "--cert/--key need --ca: the server certificate must be verified too".to_owned(),
            ));
        }
        if let Some(url) = endpoints.iter().find(|e| is_https(e)) {
            return Err(CliError::Usage(format!(
                "endpoint {url} uses TLS but no CA was given; pass --ca <PEM> or set DOMAINCTL_CA"
            )));
        }
        return Ok(None);
    };
    let files = ClientTlsFiles {
        ca: ca.to_owned(),
        cert: cert.map(Path::to_owned),
        key: key.map(Path::to_owned),
        domain_name: None,
    };
    Ok(Some(client_tls_config(&files)?))
}

/// What to do after a replica answered a call with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// A definitive answer (the request itself was refused): stop and report it.
    Final,
    /// This replica cannot serve the call: try the next one, and `active_replica` first if a
    /// passive replica named it.
    TryNext {
        /// URL of the active replica from `domain-active-replica`, when given and non-empty.
        active_replica: Option<String>,
    },
}

/// Sorts a failed call into "this replica cannot serve it" and "the answer is no".
///
/// Try the next replica on `DM_NOT_ACTIVE` (a passive replica); on UNAVAILABLE,
/// DEADLINE_EXCEEDED and CANCELLED (down, overloaded, slow, or our own deadline: tonic reports
/// an expired `grpc-timeout` as CANCELLED); on UNIMPLEMENTED without a domain code (not a
/// domain manager at all); and on any status tonic built from a local transport or protocol
/// error (it carries a `source`, which statuses decoded from a server's answer never do).
/// Everything else came from a replica that understood the request and refused it.
#[must_use]
pub fn classify(status: &Status) -> Disposition {
    let domain_code = metadata_str(status, ERROR_CODE_KEY);
    if domain_code == Some(DM_NOT_ACTIVE) {
        let active_replica = metadata_str(status, ACTIVE_REPLICA_KEY)
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned);
        return Disposition::TryNext { active_replica };
    }
    let local_failure = domain_code.is_none() && std::error::Error::source(status).is_some();
    let try_next = local_failure
        || match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => true,
            Code::Unimplemented => domain_code.is_none(),
            _ => false,
        };
    if try_next {
        Disposition::TryNext {
            active_replica: None,
        }
    } else {
        Disposition::Final
    }
}

/// Every known domain-manager replica plus the settings to reach them.
#[derive(Debug, Clone)]
pub struct Replicas {
    endpoints: Vec<String>,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
}

/// Result of one call on one replica.
enum Attempt<T> {
    Answered(T),
    Refused(Status),
    Skipped {
        reason: String,
        active_replica: Option<String>,
    },
}

impl Replicas {
    /// Replicas at `endpoints` (canonical, see [`parse_endpoints`]), tried in order; `tls`
    /// is used for https endpoints; `timeout` bounds each call on each replica.
    #[must_use]
    pub fn new(endpoints: Vec<String>, tls: Option<ClientTlsConfig>, timeout: Duration) -> Self {
        Self {
            endpoints,
            tls,
            timeout,
        }
    }

    /// Sends `request` with `send` to the first replica able to serve it (see [`classify`]).
    ///
    /// A passive replica naming an active one not in the list yet puts it next in line.
    /// Writes may reach more than one replica (e.g. the first timed out after applying it);
    /// every admin write is idempotent, so that is safe.
    pub async fn call<Req, Resp, F, Fut>(&self, request: Req, send: F) -> Result<Resp, CliError>
    where
        Req: Clone,
        F: FnMut(AdminClient, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        self.call_with(request, admin_client, send).await
    }

    /// [`Self::call`] against sequencer admin endpoints (any instance serves pruning).
    pub async fn call_sequencer<Req, Resp, F, Fut>(
        &self,
        request: Req,
        send: F,
    ) -> Result<Resp, CliError>
    where
        Req: Clone,
        F: FnMut(SequencerAdminClient, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        self.call_with(request, sequencer_admin_client, send).await
    }

    async fn call_with<C, Req, Resp, F, Fut>(
        &self,
        request: Req,
        make: fn(Channel) -> C,
        mut send: F,
    ) -> Result<Resp, CliError>
    where
        Req: Clone,
        F: FnMut(C, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut queue = self.endpoints.clone();
        let mut failures = Vec::new();
        let mut redirects = 0;
        let mut next = 0;
        while let Some(url) = queue.get(next).cloned() {
            next += 1;
            match self.attempt(&url, request.clone(), make, &mut send).await {
                Attempt::Answered(response) => return Ok(response),
                Attempt::Refused(status) => {
                    return Err(CliError::Refused(ServerError::from_status(&status)));
                }
                Attempt::Skipped {
                    mut reason,
                    active_replica,
                } => {
                    if let Some(active) = active_replica {
                        match canonical_endpoint(&active) {
                            Ok(active) if queue.contains(&active) => {
                                reason.push_str(&format!(" (active replica: {active})"));
                            }
                            Ok(active) if redirects < MAX_REDIRECTS => {
                                reason.push_str(&format!(" (active replica: {active}, trying it)"));
                                redirects += 1;
                                queue.insert(next, active);
                            }
                            Ok(active) => {
                                reason.push_str(&format!(
                                    " (active replica: {active}, not tried: too many redirects)"
                                ));
                            }
                            Err(problem) => {
                                reason.push_str(&format!(
                                    " (ignoring invalid active replica {:?}: {problem})",
                                    sanitize(&active)
                                ));
                            }
                        }
                    }
                    failures.push(FailedAttempt {
                        endpoint: url,
                        reason,
                    });
                }
            }
        }
        Err(CliError::Unavailable(failures))
    }

    async fn attempt<C, Req, Resp, F, Fut>(
        &self,
        url: &str,
        request: Req,
        make: fn(Channel) -> C,
        send: &mut F,
    ) -> Attempt<Resp>
    where
        F: FnMut(C, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let call = async {
            let client = match self.connect(url).await {
                Ok(channel) => make(channel),
                Err(reason) => {
                    return Attempt::Skipped {
                        reason,
                        active_replica: None,
                    };
                }
            };
            let mut request = Request::new(request);
            // Lets the server drop work the client has given up on.
            request.set_timeout(self.timeout);
            match send(client, request).await {
                Ok(response) => Attempt::Answered(response.into_inner()),
                Err(status) => match classify(&status) {
                    Disposition::Final => Attempt::Refused(status),
                    Disposition::TryNext { active_replica } => Attempt::Skipped {
                        reason: ServerError::from_status(&status).to_string(),
                        active_replica,
                    },
                },
            }
        };
        // One deadline for connect + call: a replica that accepts TCP but never answers
        // must not hang the CLI.
        match tokio::time::timeout(self.timeout, call).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Skipped {
                reason: format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
                active_replica: None,
            },
        }
    }

    async fn connect(&self, url: &str) -> Result<Channel, String> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("invalid endpoint: {}", error_chain(&e)))?
            .connect_timeout(self.timeout);
        if is_https(url) {
            let tls = self
                .tls
                .clone()
                .ok_or_else(|| "uses TLS but no CA was given (--ca)".to_owned())?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("invalid TLS settings: {}", error_chain(&e)))?;
        }
        endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {}", error_chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, domain_code: Option<&str>, active: Option<&str>) -> Status {
        let mut status = Status::new(code, "msg");
        if let Some(value) = domain_code {
            status
                .metadata_mut()
                .insert(ERROR_CODE_KEY, value.parse().expect("ascii"));
        }
        if let Some(value) = active {
            status
                .metadata_mut()
                .insert(ACTIVE_REPLICA_KEY, value.parse().expect("ascii"));
        }
        status
    }

    #[test]
    fn endpoints_from_env_style_list() {
        let endpoints = parse_endpoints(&[
            " http://dm-0:4402, https://dm-1:4402/ ,,HTTP://dm-0:4402".to_owned(),
            "http://10.0.0.3:4402".to_owned(),
        ])
        .expect("valid");
        assert_eq!(
            endpoints,
            [
                "http://dm-0:4402",
                "https://dm-1:4402",
                "http://10.0.0.3:4402"
            ]
        );
    }

    #[test]
    fn bad_endpoints_are_usage_errors() {
        for bad in [
            "dm-0:4402",
            "ftp://dm-0:1",
            "http://dm-0:1/admin",
            "http://",
            "not a url",
        ] {
            let error = parse_endpoints(&[bad.to_owned()]).expect_err(bad);
            assert_eq!(error.exit_code(), 2, "{bad}");
            assert!(error.to_string().contains("invalid endpoint"), "{error}");
        }
        let error = parse_endpoints(&[" , ".to_owned()]).expect_err("empty");
        assert!(error.to_string().contains("no endpoint given"), "{error}");
    }

    #[test]
    fn classification() {
        let try_next = |active_replica: Option<&str>| Disposition::TryNext {
            active_replica: active_replica.map(Into::into),
        };
        let mut cases = vec![
            (
                status(
                    Code::Unavailable,
                    Some(DM_NOT_ACTIVE),
                    Some("http://dm-1:4402"),
                ),
                try_next(Some("http://dm-1:4402")),
            ),
            (
                status(Code::Unavailable, Some(DM_NOT_ACTIVE), Some("")),
                try_next(None),
            ),
            (status(Code::Unavailable, None, None), try_next(None)),
            (status(Code::DeadlineExceeded, None, None), try_next(None)),
            (status(Code::Cancelled, None, None), try_next(None)),
            (status(Code::Unimplemented, None, None), try_next(None)),
            // A server's UNKNOWN (no local transport cause) is an answer.
            (status(Code::Unknown, None, None), Disposition::Final),
        ];
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::PermissionDenied,
            Code::AlreadyExists,
            Code::Internal,
        ] {
            cases.push((
                status(code, Some("DM_INVALID_ARGUMENT"), None),
                Disposition::Final,
            ));
            cases.push((status(code, None, None), Disposition::Final));
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        cases.push((Status::from_error(Box::new(io)), try_next(None)));
        for (status, expected) in &cases {
            assert_eq!(&classify(status), expected, "{status:?}");
        }
    }

    #[test]
    fn tls_flag_combinations() {
        let https = vec!["https://dm-0:4402".to_owned()];
        let http = vec!["http://dm-0:4402".to_owned()];
        let pem = Path::new("/nonexistent/x.pem");
        let error = load_tls(None, Some(pem), None, &http).expect_err("cert without key");
        assert!(error.to_string().contains("--cert needs --key"), "{error}");
        let error = load_tls(None, None, Some(pem), &http).expect_err("key without cert");
        assert!(error.to_string().contains("--key needs --cert"), "{error}");
        let error = load_tls(None, None, None, &https).expect_err("https without ca");
        assert_eq!(error.exit_code(), 2);
        assert!(
            error.to_string().contains("https://dm-0:4402 uses TLS"),
            "{error}"
        );
        assert!(
            load_tls(None, None, None, &http)
                .expect("plaintext")
                .is_none()
        );
    }

    #[test]
    fn bad_ca_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        // (file name, contents written there, what the refusal says)
        for (name, contents, reason) in [
            ("missing.pem", None, "does not exist"),
            (
                "garbage.pem",
                Some("not a certificate\n"),
                "no certificate found",
            ),
        ] {
            let path = dir.path().join(name);
            if let Some(contents) = contents {
                std::fs::write(&path, contents).expect("write");
            }
            let error = load_tls(Some(&path), None, None, &[]).expect_err(name);
            assert_eq!(error.exit_code(), 2, "{name}");
            let text = error.to_string();
            assert!(text.contains(&path.display().to_string()), "{name}: {text}");
            assert!(text.contains(reason), "{name}: {text}");
        }

        let good = dir.path().join("ca.pem");
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("self-signed cert");
        std::fs::write(&good, ca.cert.pem()).expect("write");
        assert!(
            load_tls(Some(&good), None, None, &[])
                .expect("valid ca")
                .is_some()
        );
    }

    #[tokio::test]
    async fn all_replicas_down_lists_each() {
        // Ports 1 and 2 on localhost: nothing listens there, connections are refused.
        let replicas = Replicas::new(
            vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            None,
            Duration::from_secs(2),
        );
        let error = replicas
            .call(
                domain_proto::manager::admin::v1::StatusRequest {},
                |mut client, request| async move { client.status(request).await },
            )
            .await
            .expect_err("nothing listens");
        assert_eq!(error.exit_code(), 3);
        let CliError::Unavailable(failures) = &error else {
            panic!("unexpected {error}");
        };
        let endpoints: Vec<&str> = failures.iter().map(|f| f.endpoint.as_str()).collect();
        assert_eq!(endpoints, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert!(
            failures
                .iter()
                .all(|f| f.reason.starts_with("cannot connect"))
        );
    }
}
