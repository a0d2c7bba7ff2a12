//! Whether the identity a sequencer endpoint shows in `GetDomainInfo` can be trusted.
//!
//! An endpoint's answer is only a claim: any server with a certificate the client's CA
//! accepts can answer with any domain id and any sequencer key. What the client checks:
//!
//! - the **namespace key**, when shown, must be the domain id's (its fingerprint is the
//!   domain id's fingerprint): it is self-certifying, so no endpoint can substitute another;
//! - every **sequencer registration** shown must carry a valid namespace signature (an
//!   endpoint showing a forged one is refused);
//! - without a pinned sequencer key, the sequencer key is trusted only when the latest
//!   namespace-signed `SequencerRegistration` of the shown sequencer id registers exactly
//!   that key ([`DomainInfo::registered`]).
//!
//! What is left to the caller: with no expected domain id at all, a server holding its own
//! namespace key can show a self-consistent other domain. [`crate::DomainClient`] then
//! requires every endpoint that answers to agree, and the participant's `connect-multi`
//! does the same; pinning the domain id (always done by the participant after its first
//! connect, and by the mediator from its config) or the sequencer key closes that gap.

use std::collections::BTreeMap;

use domain_identity::{DomainId, MemberId, PublicKey};
use domain_proto::sequencer::v1 as pb;
use domain_proto::topology::v1 as topology_pb;
use domain_topology::{Mapping, Operation, TopologyTransaction};

/// What every endpoint of one domain must agree on, with what the client could verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub domain_id: String,
    pub sequencer_id: String,
    pub sequencer_key: PublicKey,
    pub protocol_version: String,
    pub max_request_size: u64,
    /// The domain's namespace key, checked against the domain id; `None` while the
    /// sequencer does not know it (the domain manager has not authenticated yet).
    pub namespace_key: Option<PublicKey>,
    /// The latest namespace-signed registration of `sequencer_id` registers `sequencer_key`.
    pub registered: bool,
}

impl DomainInfo {
    /// Parses and checks a `GetDomainInfo` answer: ids and keys well-formed, the namespace key
    /// (if shown) the domain's, every sequencer registration shown signed by it. Decides
    /// [`Self::registered`]. An error says why the answer is refused.
    pub fn from_proto(info: pb::GetDomainInfoResponse) -> Result<Self, String> {
        let domain = DomainId::parse(&info.domain_id)
            .map_err(|e| format!("invalid domain id {:?}: {e}", info.domain_id))?;
        let key = info
            .sequencer_public_key
            .ok_or_else(|| "no sequencer public key".to_owned())?;
        let sequencer_key =
            PublicKey::try_from(&key).map_err(|e| format!("invalid sequencer public key: {e}"))?;
        let namespace_key = match info.namespace_public_key {
            None => None,
            Some(k) => {
                let k = PublicKey::try_from(&k)
                    .map_err(|e| format!("invalid namespace public key: {e}"))?;
                if !domain.matches_key(&k) {
                    return Err(format!(
                        "shows namespace key {} for domain {domain}, whose namespace key has \
                         fingerprint {}",
                        k.fingerprint(),
                        domain.fingerprint()
                    ));
                }
                Some(k)
            }
        };
        let registered = match &namespace_key {
            Some(ns) => registered_key(&domain, ns, &info.sequencer_registrations)?
                .get(&info.sequencer_id)
                .is_some_and(|k| k.as_ref() == Some(&sequencer_key)),
            None => false,
        };
        Ok(Self {
            domain_id: info.domain_id,
            sequencer_id: info.sequencer_id,
            sequencer_key,
            protocol_version: info.protocol_version,
            max_request_size: info.max_request_size,
            namespace_key,
            registered,
        })
    }

    /// Why the sequencer key cannot be trusted without a pin, if it cannot.
    #[must_use]
    pub fn unregistered_reason(&self) -> Option<String> {
        if self.registered {
            return None;
        }
        Some(match &self.namespace_key {
            None => format!(
                "presents sequencer key {} but no namespace key of domain {} to check it \
                 against (the domain manager has not connected yet?); pin the sequencer key \
                 to use it anyway",
                self.sequencer_key.fingerprint(),
                self.domain_id
            ),
            Some(_) => format!(
                "presents sequencer key {} for {}, which no namespace-signed sequencer \
                 registration of domain {} confirms",
                self.sequencer_key.fingerprint(),
                self.sequencer_id,
                self.domain_id
            ),
        })
    }
}

/// The key each sequencer id is registered with after the namespace-signed `registrations`
/// (latest serial wins; `None` when removed or registered without a key). Any registration
/// with a bad signature, of another domain, or not a sequencer mapping is an error.
fn registered_key(
    domain: &DomainId,
    namespace_key: &PublicKey,
    registrations: &[topology_pb::SignedTopologyTransaction],
) -> Result<BTreeMap<String, Option<PublicKey>>, String> {
    let mut latest: BTreeMap<String, (u64, Option<PublicKey>)> = BTreeMap::new();
    for signed in registrations {
        let tx: TopologyTransaction = domain_topology::verify_signed(signed, domain, namespace_key)
            .map_err(|e| format!("sequencer registration refused: {e}"))?;
        let (sequencer, key): (&MemberId, Option<PublicKey>) = match &tx.mapping {
            Mapping::Sequencer {
                sequencer,
                public_key,
            } => (
                sequencer,
                match tx.operation {
                    Operation::Replace => public_key.clone(),
                    Operation::Remove => None,
                },
            ),
            other => {
                return Err(format!(
                    "sequencer registration refused: serial {} is a {} mapping",
                    tx.serial,
                    other.kind()
                ));
            }
        };
        let entry = latest
            .entry(sequencer.to_string())
            .or_insert((tx.serial, key.clone()));
        if tx.serial >= entry.0 {
            *entry = (tx.serial, key);
        }
    }
    Ok(latest.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

#[cfg(test)]
mod tests {
    use domain_identity::{MemberRole, SigningKeyPair, UniqueId};
    use domain_proto::common::v1 as common_pb;

    use super::*;

    struct Domain {
        id: DomainId,
        ns: SigningKeyPair,
    }

    fn domain(ns: SigningKeyPair) -> Domain {
        let id = DomainId::new(UniqueId::new("d", *ns.fingerprint()).expect("id"));
        Domain { id, ns }
    }

    fn sequencer(key: &SigningKeyPair) -> MemberId {
        MemberId::new(
            MemberRole::Sequencer,
            UniqueId::new("seq", *key.fingerprint()).expect("id"),
        )
    }

    fn registration(
        d: &Domain,
        signer: &SigningKeyPair,
        serial: u64,
        operation: Operation,
        seq: &SigningKeyPair,
    ) -> topology_pb::SignedTopologyTransaction {
        TopologyTransaction {
            serial,
            operation,
            mapping: Mapping::Sequencer {
                sequencer: sequencer(seq),
                public_key: Some(seq.public_key().clone()),
            },
        }
        .sign(&d.id, signer)
    }

    fn answer(
        d: &Domain,
        seq: &SigningKeyPair,
        ns_shown: Option<&SigningKeyPair>,
        registrations: Vec<topology_pb::SignedTopologyTransaction>,
    ) -> pb::GetDomainInfoResponse {
        let key = |k: &SigningKeyPair| common_pb::PublicKey {
            algorithm: common_pb::KeyAlgorithm::Ed25519 as i32,
            key: k.public_key().to_bytes().to_vec(),
        };
        pb::GetDomainInfoResponse {
            domain_id: d.id.to_string(),
            sequencer_id: sequencer(seq).to_string(),
            sequencer_public_key: Some(key(seq)),
            protocol_version: "v".into(),
            max_request_size: 1,
            namespace_public_key: ns_shown.map(key),
            sequencer_registrations: registrations,
        }
    }

    #[test]
    fn registered_key_is_trusted() {
        let d = domain(SigningKeyPair::generate());
        let seq = SigningKeyPair::generate();
        let reg = registration(&d, &d.ns, 1, Operation::Replace, &seq);
        let info = DomainInfo::from_proto(answer(&d, &seq, Some(&d.ns), vec![reg])).expect("ok");
        assert!(info.registered);
        assert_eq!(info.unregistered_reason(), None);
        assert_eq!(info.namespace_key.as_ref(), Some(d.ns.public_key()));
    }

    #[test]
    fn item_12_other_key_under_the_same_domain_is_not_trusted() {
        let d = domain(SigningKeyPair::generate());
        let real = SigningKeyPair::generate();
        let fake = SigningKeyPair::generate();
        let reg = registration(&d, &d.ns, 1, Operation::Replace, &real);
        // The fake copies the real namespace key and registrations, shows its own key.
        let info =
            DomainInfo::from_proto(answer(&d, &fake, Some(&d.ns), vec![reg.clone()])).expect("ok");
        assert!(!info.registered);
        assert!(
            info.unregistered_reason()
                .expect("reason")
                .contains("no namespace-signed")
        );
        // No namespace key or registrations at all: not trusted either.
        let info = DomainInfo::from_proto(answer(&d, &fake, None, vec![])).expect("ok");
        assert!(!info.registered);
        // A registration of its own key signed by its own key: refused outright.
        let forged = registration(&d, &fake, 2, Operation::Replace, &fake);
        let err = DomainInfo::from_proto(answer(&d, &fake, Some(&d.ns), vec![reg, forged]))
            .expect_err("forged registration");
        assert!(err.contains("sequencer registration refused"), "{err}");
        // Its own key shown as the namespace key: refused outright.
        let err = DomainInfo::from_proto(answer(&d, &fake, Some(&fake), vec![]))
            .expect_err("wrong namespace key");
        assert!(err.contains("namespace key"), "{err}");
    }

    #[test]
    fn latest_registration_wins() {
        let d = domain(SigningKeyPair::generate());
        let seq = SigningKeyPair::generate();
        let regs = vec![
            registration(&d, &d.ns, 1, Operation::Replace, &seq),
            registration(&d, &d.ns, 5, Operation::Remove, &seq),
        ];
        let info = DomainInfo::from_proto(answer(&d, &seq, Some(&d.ns), regs)).expect("ok");
        assert!(!info.registered, "removed by a later serial");
        let regs = vec![
            registration(&d, &d.ns, 5, Operation::Remove, &seq),
            registration(&d, &d.ns, 7, Operation::Replace, &seq),
        ];
        let info = DomainInfo::from_proto(answer(&d, &seq, Some(&d.ns), regs)).expect("ok");
        assert!(info.registered, "registered again by a later serial");
    }
}
