use super::*;
use domain_proto::topology::v1 as pb;

fn domain(key: &SigningKeyPair) -> DomainId {
    DomainId::new(domain_identity::UniqueId::new("dom", *key.fingerprint()).expect("valid name"))
}

fn participant(seed: u8) -> MemberId {
    let k = SigningKeyPair::from_seed(&[seed; 32]);
    MemberId::new(
        MemberRole::Participant,
        domain_identity::UniqueId::new(format!("p{seed}"), *k.fingerprint()).expect("valid name"),
    )
}

fn set_state(serial: u64, p: &MemberId, permission: Permission) -> TopologyTransaction {
    TopologyTransaction::replace_participant(serial, p, permission)
}

#[test]
fn sign_verify_round_trip() {
    let ns = SigningKeyPair::from_seed(&[1; 32]);
    let d = domain(&ns);
    let tx = set_state(1, &participant(2), Permission::Submission);
    let signed = tx.sign(&d, &ns);
    assert_eq!(verify_signed(&signed, &d, ns.public_key()), Ok(tx));
}

#[test]
fn tampered_or_foreign_signatures_are_refused() {
    let ns = SigningKeyPair::from_seed(&[1; 32]);
    let d = domain(&ns);
    let tx = set_state(1, &participant(2), Permission::Submission);
    let mut signed = tx.sign(&d, &ns);
    signed.transaction.push(0);
    assert!(matches!(
        verify_signed(&signed, &d, ns.public_key()),
        Err(TopologyError::BadSignature(_))
    ));
    // Signed by another key that claims to be the namespace key.
    let other = SigningKeyPair::from_seed(&[9; 32]);
    let forged = tx.sign(&d, &other);
    assert!(matches!(
        verify_signed(&forged, &d, other.public_key()),
        Err(TopologyError::BadSignature(_))
    ));
    assert!(matches!(
        verify_signed(&forged, &d, ns.public_key()),
        Err(TopologyError::BadSignature(_))
    ));
    // Valid signature, wrong purpose.
    let mut wrong_purpose = tx.sign(&d, &ns);
    if let Some(s) = wrong_purpose.signature.as_mut() {
        s.purpose = SignaturePurpose::Submission.as_i32();
    }
    assert!(verify_signed(&wrong_purpose, &d, ns.public_key()).is_err());
}

#[test]
fn content_is_validated() {
    let ns = SigningKeyPair::from_seed(&[1; 32]);
    let d = domain(&ns);
    let ds = d.to_string();
    let mut p = set_state(1, &participant(2), Permission::Submission).to_proto(&ds);
    p.serial = 0;
    assert!(TopologyTransaction::from_proto(&p, &ds).is_err());
    let mut p = set_state(1, &participant(2), Permission::Submission).to_proto(&ds);
    p.domain_id = "other::1220aa".into();
    assert!(matches!(
        TopologyTransaction::from_proto(&p, &ds),
        Err(TopologyError::WrongDomain { .. })
    ));
    let mut p = set_state(1, &participant(2), Permission::Submission).to_proto(&ds);
    if let Some(pb::topology_transaction::Mapping::ParticipantState(s)) = p.mapping.as_mut() {
        s.permission = 0;
    }
    assert!(TopologyTransaction::from_proto(&p, &ds).is_err());
    let mut p = set_state(1, &participant(2), Permission::Submission).to_proto(&ds);
    if let Some(pb::topology_transaction::Mapping::ParticipantState(s)) = p.mapping.as_mut() {
        s.participant_id = participant(2).to_string().replace("PAR::", "MED::");
    }
    assert!(TopologyTransaction::from_proto(&p, &ds).is_err());
    let mut p = set_state(1, &participant(2), Permission::Submission).to_proto(&ds);
    p.operation = 0;
    assert!(TopologyTransaction::from_proto(&p, &ds).is_err());
    let bad_params = pb::TopologyTransaction {
        domain_id: ds.clone(),
        serial: 3,
        operation: pb::TopologyOperation::Replace as i32,
        mapping: Some(pb::topology_transaction::Mapping::DomainParameters(
            pb::DomainParameters {
                participant_response_timeout_micros: 1_000_000,
                max_request_size: 10,
                topology_change_delay_micros: 0,
            },
        )),
    };
    assert!(TopologyTransaction::from_proto(&bad_params, &ds).is_err());
    // A mediator key must match the id's fingerprint.
    let med_key = SigningKeyPair::from_seed(&[5; 32]);
    let mediator = MemberId::new(
        MemberRole::Mediator,
        domain_identity::UniqueId::new("m", *med_key.fingerprint()).expect("valid"),
    );
    let wrong = TopologyTransaction {
        serial: 4,
        operation: Operation::Replace,
        mapping: Mapping::Mediator {
            mediator,
            public_key: Some(ns.public_key().clone()),
        },
    }
    .to_proto(&ds);
    assert!(TopologyTransaction::from_proto(&wrong, &ds).is_err());
}

#[test]
fn state_is_time_indexed_and_highest_serial_wins() {
    let p = participant(2);
    let mut st = TopologyState::new();
    // Default delay 250 ms.
    assert_eq!(
        st.add(1_000_000, set_state(1, &p, Permission::Submission)),
        Some(1_250_000)
    );
    assert_eq!(st.participant_at(&p.to_string(), 1_249_999), None);
    assert_eq!(
        st.participant_at(&p.to_string(), 1_250_000)
            .map(|a| a.permission),
        Some(Permission::Submission)
    );
    assert_eq!(
        st.add(2_000_000, set_state(2, &p, Permission::Disabled)),
        Some(2_250_000)
    );
    // Re-adding a seen serial is ignored.
    assert_eq!(
        st.add(3_000_000, set_state(2, &p, Permission::Submission)),
        None
    );
    assert_eq!(
        st.participant_at(&p.to_string(), 2_000_000)
            .map(|a| a.permission),
        Some(Permission::Submission)
    );
    assert_eq!(
        st.participant_at(&p.to_string(), 2_250_000)
            .map(|a| a.permission),
        Some(Permission::Disabled)
    );
    assert_eq!(st.participants_at(2_250_000).len(), 1);
    let removed = TopologyTransaction {
        serial: 5,
        operation: Operation::Remove,
        mapping: set_state(5, &p, Permission::Disabled).mapping,
    };
    st.add(4_000_000, removed);
    assert_eq!(st.participant_at(&p.to_string(), 5_000_000), None);
    assert!(st.participants_at(5_000_000).is_empty());
}

#[test]
fn delay_in_force_at_sequencing_time_applies() {
    let mut st = TopologyState::new();
    let params = DomainParameters {
        topology_change_delay: Duration::from_secs(2),
        ..DomainParameters::default()
    };
    let tx = TopologyTransaction {
        serial: 1,
        operation: Operation::Replace,
        mapping: Mapping::Parameters(params),
    };
    // Sequenced under the default delay (250 ms).
    assert_eq!(st.add(1_000_000, tx), Some(1_250_000));
    assert_eq!(st.parameters_at(1_000_000), DomainParameters::default());
    assert_eq!(st.parameters_at(1_250_000), params);
    // A later transaction uses the new 2 s delay.
    let p = participant(3);
    assert_eq!(
        st.add(1_300_000, set_state(2, &p, Permission::Observation)),
        Some(3_300_000)
    );
    assert_eq!(st.pending_after(1_300_000).len(), 1);
}

#[test]
fn permission_names_parse_and_order() {
    assert_eq!(
        "confirmation".parse::<Permission>(),
        Ok(Permission::Confirmation)
    );
    assert!("admin".parse::<Permission>().is_err());
    assert!(Permission::Submission.can_confirm());
    assert!(Permission::Confirmation.can_confirm());
    assert!(!Permission::Observation.can_confirm());
    assert!(!Permission::Disabled.is_active());
}

#[test]
fn domain_manager_member_shares_the_domain_fingerprint() {
    let ns = SigningKeyPair::from_seed(&[1; 32]);
    let d = domain(&ns);
    let m = domain_manager_member(&d);
    assert!(m.matches_key(ns.public_key()));
    assert!(m.to_string().starts_with("DOM::dom::"));
}

#[test]
fn signed_envelopes_decode_for_their_domain_only() {
    let ns = SigningKeyPair::from_seed(&[1; 32]);
    let d = domain(&ns);
    let tx = set_state(3, &participant(2), Permission::Observation);
    let bytes = tx.sign(&d, &ns).encode_to_vec();
    assert_eq!(
        TopologyTransaction::from_signed_bytes(&bytes, &d.to_string()),
        Ok(tx)
    );
    let other = domain(&SigningKeyPair::from_seed(&[9; 32]));
    assert!(matches!(
        TopologyTransaction::from_signed_bytes(&bytes, &other.to_string()),
        Err(TopologyError::WrongDomain { .. })
    ));
    assert!(matches!(
        TopologyTransaction::from_signed_bytes(b"\xff\xff", &d.to_string()),
        Err(TopologyError::Malformed(_))
    ));
}
