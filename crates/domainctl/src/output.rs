//! Rendering of results: serializable views of the admin API responses (snake_case, enums as
//! lowercase names, timestamps as both `*_micros` and RFC3339 `*_at`) and a small aligned-column
//! table formatter.

use domain_time::Timestamp;
use std::time::{Duration, UNIX_EPOCH};

use domain_proto::common::v1 as common_pb;
use domain_proto::manager::admin::v1 as pb;
use domain_proto::sequencer::admin::v1 as sequencer_admin_pb;
use domain_proto::topology::v1 as topology_pb;
use serde::Serialize;

use crate::cli::OutputFormat;
use crate::error::{CliError, sanitize};

/// Something printable both as a table and as JSON.
pub trait Render: Serialize {
    /// The table form, ending with a newline.
    fn table(&self) -> String;
}

/// Renders `value` in `format`, ending with a newline.
pub fn render<T: Render>(value: &T, format: OutputFormat) -> Result<String, CliError> {
    match format {
        OutputFormat::Table => Ok(value.table()),
        OutputFormat::Json => serde_json::to_string_pretty(value)
            .map(|mut json| {
                json.push('\n');
                json
            })
            .map_err(|e| CliError::Local(format!("cannot encode JSON output: {e}"))),
    }
}

/// Column alignment in a [`Table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Pad on the right (text).
    Left,
    /// Pad on the left (numbers).
    Right,
}

/// Aligned columns separated by two spaces, with a header row. Cells are sanitized (control
/// characters escaped) since most of them come from the server. The last column is not
/// padded, so lines carry no trailing spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    aligns: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns, all left-aligned.
    #[must_use]
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            aligns: vec![Align::Left; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Sets the alignment of column `index` (ignored when out of range).
    #[must_use]
    pub fn align(mut self, index: usize, align: Align) -> Self {
        if let Some(slot) = self.aligns.get_mut(index) {
            *slot = align;
        }
        self
    }

    /// Appends a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.iter().map(|c| sanitize(c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table text, one line per row plus the header, each ending with a newline.
    #[must_use]
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let last = self.headers.len().saturating_sub(1);
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i].saturating_sub(width(cell));
                match self.aligns[i] {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if i != last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// First instant RFC3339 (and humantime) cannot write: year 10000.
const MAX_RFC3339_MICROS: i64 = 253_402_300_800 * 1_000_000;

/// Protocol microseconds since the Unix epoch as RFC3339 UTC with microseconds, e.g.
/// `2024-05-01T12:00:00.000000Z`. `None` for instants before 1970 or after 9999, which
/// humantime cannot format (it would panic) and no honest server sends.
#[must_use]
pub fn rfc3339_micros(micros: i64) -> Option<String> {
    if !(0..MAX_RFC3339_MICROS).contains(&micros) {
        return None;
    }
    let time = UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).ok()?);
    Some(humantime::format_rfc3339_micros(time).to_string())
}

/// Table cell for a timestamp: RFC3339, or the raw value when it cannot be written as a date.
fn timestamp_cell(at: Timestamp) -> String {
    let micros = at.as_micros();
    rfc3339_micros(micros).unwrap_or_else(|| format!("invalid ({micros} µs)"))
}

/// Protocol microseconds as a humantime duration (`30s`, `250ms`); raw when negative.
#[must_use]
pub fn duration_text(micros: i64) -> String {
    match u64::try_from(micros) {
        Ok(0) => "0s".to_owned(),
        Ok(us) => humantime::format_duration(Duration::from_micros(us)).to_string(),
        Err(_) => format!("{micros}us"),
    }
}

/// The lowercase name of a permission as sent by the server.
#[must_use]
pub fn permission_name(value: i32) -> String {
    match topology_pb::ParticipantPermission::try_from(value) {
        Ok(topology_pb::ParticipantPermission::Submission) => "submission".to_owned(),
        Ok(topology_pb::ParticipantPermission::Confirmation) => "confirmation".to_owned(),
        Ok(topology_pb::ParticipantPermission::Observation) => "observation".to_owned(),
        Ok(topology_pb::ParticipantPermission::Disabled) => "disabled".to_owned(),
        Ok(topology_pb::ParticipantPermission::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown({value})"),
    }
}

/// The lowercase name of a trust level as sent by the server.
#[must_use]
pub fn trust_level_name(value: i32) -> String {
    match topology_pb::TrustLevel::try_from(value) {
        Ok(topology_pb::TrustLevel::Ordinary) => "ordinary".to_owned(),
        Ok(topology_pb::TrustLevel::Vip) => "vip".to_owned(),
        Ok(topology_pb::TrustLevel::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown({value})"),
    }
}

/// The name of a component state as sent by the server (`status`).
#[must_use]
pub fn component_state_name(value: i32) -> String {
    match pb::ComponentState::try_from(value) {
        Ok(pb::ComponentState::Active) => "active".to_owned(),
        Ok(pb::ComponentState::Passive) => "passive".to_owned(),
        Ok(pb::ComponentState::Serving) => "serving".to_owned(),
        Ok(pb::ComponentState::NotServing) => "not-serving".to_owned(),
        Ok(pb::ComponentState::Unreachable) => "unreachable".to_owned(),
        Ok(pb::ComponentState::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown({value})"),
    }
}

/// The name of a member kind as sent by the sequencer (`pruning status`).
#[must_use]
pub fn member_kind_name(value: i32) -> String {
    use sequencer_admin_pb::MemberKind;
    match MemberKind::try_from(value) {
        Ok(MemberKind::Participant) => "participant".to_owned(),
        Ok(MemberKind::Mediator) => "mediator".to_owned(),
        Ok(MemberKind::DomainManager) => "domain-manager".to_owned(),
        Ok(MemberKind::Sequencer) => "sequencer".to_owned(),
        Ok(MemberKind::Unspecified) => "unknown".to_owned(),
        Err(_) => format!("unknown({value})"),
    }
}

/// Result of set-state, disable and remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateChangeView {
    /// The participant the change was for.
    pub participant_id: String,
    /// Topology serial of the change (or of the state already in place).
    pub serial: u64,
    /// When the change takes effect on every member.
    pub effective_at_micros: Timestamp,
    /// `effective_at_micros` as RFC3339.
    pub effective_at: Option<String>,
    /// False when the requested state was already in place.
    pub changed: bool,
}

impl StateChangeView {
    /// The view of a response to a change for `participant_id`.
    #[must_use]
    pub fn new(participant_id: String, response: &pb::ParticipantStateChange) -> Self {
        Self {
            participant_id,
            serial: response.serial,
            effective_at_micros: response.effective_at_micros.into(),
            effective_at: rfc3339_micros(response.effective_at_micros),
            changed: response.changed,
        }
    }
}

impl Render for StateChangeView {
    fn table(&self) -> String {
        let mut table = Table::new(&["PARTICIPANT", "SERIAL", "EFFECTIVE AT", "CHANGED"])
            .align(1, Align::Right);
        table.row(vec![
            self.participant_id.clone(),
            self.serial.to_string(),
            timestamp_cell(self.effective_at_micros),
            self.changed.to_string(),
        ]);
        table.render()
    }
}

/// One participant's topology state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantView {
    /// `PAR::name::fingerprint`.
    pub participant_id: String,
    /// `submission`, `confirmation`, `observation` or `disabled`.
    pub permission: String,
    /// `ordinary` or `vip`.
    pub trust_level: String,
    /// Topology serial of the state.
    pub serial: u64,
    /// When the state took (or takes) effect.
    pub effective_at_micros: Timestamp,
    /// `effective_at_micros` as RFC3339.
    pub effective_at: Option<String>,
}

impl From<&pb::ParticipantInfo> for ParticipantView {
    fn from(info: &pb::ParticipantInfo) -> Self {
        Self {
            participant_id: info.participant_id.clone(),
            permission: permission_name(info.permission),
            trust_level: trust_level_name(info.trust_level),
            serial: info.serial,
            effective_at_micros: info.effective_at_micros.into(),
            effective_at: rfc3339_micros(info.effective_at_micros),
        }
    }
}

fn participants_table<'a>(participants: impl IntoIterator<Item = &'a ParticipantView>) -> String {
    let mut table = Table::new(&[
        "PARTICIPANT",
        "PERMISSION",
        "TRUST",
        "SERIAL",
        "EFFECTIVE AT",
    ])
    .align(3, Align::Right);
    for p in participants {
        table.row(vec![
            p.participant_id.clone(),
            p.permission.clone(),
            p.trust_level.clone(),
            p.serial.to_string(),
            timestamp_cell(p.effective_at_micros),
        ]);
    }
    table.render()
}

impl Render for ParticipantView {
    fn table(&self) -> String {
        participants_table([self])
    }
}

/// `participants list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantListView {
    /// Every participant, in server order.
    pub participants: Vec<ParticipantView>,
}

impl Render for ParticipantListView {
    fn table(&self) -> String {
        participants_table(&self.participants)
    }
}

/// One registered mediator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediatorView {
    /// `MED::name::fingerprint`.
    pub mediator_id: String,
    /// `ed25519`, `unspecified` or `unknown(n)`.
    pub key_algorithm: String,
    /// The raw public key, hex.
    pub public_key_hex: String,
    /// Fingerprint of the key; `None` when the key is absent or not a valid ed25519 key.
    pub key_fingerprint: Option<String>,
}

impl From<&pb::MediatorInfo> for MediatorView {
    fn from(info: &pb::MediatorInfo) -> Self {
        let (algorithm, key) = match &info.public_key {
            Some(key) => (key.algorithm, key.key.as_slice()),
            None => (common_pb::KeyAlgorithm::Unspecified as i32, &[][..]),
        };
        let key_algorithm = match common_pb::KeyAlgorithm::try_from(algorithm) {
            // Registered by id only: the key is bound by the id's fingerprint when the
            // mediator first authenticates.
            _ if info.public_key.is_none() => "-".to_owned(),
            Ok(common_pb::KeyAlgorithm::Ed25519) => "ed25519".to_owned(),
            Ok(common_pb::KeyAlgorithm::Unspecified) => "unspecified".to_owned(),
            Err(_) => format!("unknown({algorithm})"),
        };
        Self {
            mediator_id: info.mediator_id.clone(),
            key_algorithm,
            public_key_hex: hex::encode(key),
            key_fingerprint: domain_identity::PublicKey::from_bytes(key)
                .ok()
                .map(|k| k.fingerprint().to_string()),
        }
    }
}

/// `mediators list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediatorListView {
    /// Every mediator, in server order.
    pub mediators: Vec<MediatorView>,
}

impl Render for MediatorListView {
    fn table(&self) -> String {
        let mut table = Table::new(&["MEDIATOR", "ALGORITHM", "KEY FINGERPRINT"]);
        for m in &self.mediators {
            table.row(vec![
                m.mediator_id.clone(),
                m.key_algorithm.clone(),
                m.key_fingerprint.clone().unwrap_or_else(|| {
                    if m.public_key_hex.is_empty() {
                        "(bound by the id's fingerprint)".to_owned()
                    } else {
                        "invalid key".to_owned()
                    }
                }),
            ]);
        }
        table.render()
    }
}

/// One sequencer instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SequencerView {
    /// `SEQ::name::fingerprint`.
    pub sequencer_id: String,
    /// Instance index.
    pub index: i32,
    /// Whether the instance is currently sequencing.
    pub online: bool,
    /// The instance's sequencing watermark.
    pub watermark_micros: Timestamp,
    /// `watermark_micros` as RFC3339.
    pub watermark_at: Option<String>,
    /// How far the instance lags behind, in microseconds.
    pub lag_micros: i64,
    /// `lag_micros` in milliseconds.
    pub lag_ms: f64,
}

impl From<&pb::SequencerInstanceInfo> for SequencerView {
    fn from(info: &pb::SequencerInstanceInfo) -> Self {
        Self {
            sequencer_id: info.sequencer_id.clone(),
            index: info.index,
            online: info.online,
            watermark_micros: info.watermark_micros.into(),
            watermark_at: rfc3339_micros(info.watermark_micros),
            lag_micros: info.lag_micros,
            lag_ms: info.lag_micros as f64 / 1000.0,
        }
    }
}

/// `sequencers list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SequencerListView {
    /// Every instance, in server order.
    pub instances: Vec<SequencerView>,
}

impl Render for SequencerListView {
    fn table(&self) -> String {
        let mut table = Table::new(&["SEQUENCER", "INDEX", "ONLINE", "WATERMARK", "LAG(ms)"])
            .align(1, Align::Right)
            .align(4, Align::Right);
        for s in &self.instances {
            table.row(vec![
                s.sequencer_id.clone(),
                s.index.to_string(),
                if s.online { "yes" } else { "no" }.to_owned(),
                timestamp_cell(s.watermark_micros),
                format!("{:.1}", s.lag_ms),
            ]);
        }
        table.render()
    }
}

/// Dynamic domain parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParametersView {
    /// Mediator's wait for confirmation responses, microseconds.
    pub participant_response_timeout_micros: i64,
    /// The same as a humantime duration (`30s`).
    pub participant_response_timeout: String,
    /// Largest accepted submission, bytes.
    pub max_request_size: u64,
    /// Topology change delay, microseconds.
    pub topology_change_delay_micros: i64,
    /// The same as a humantime duration.
    pub topology_change_delay: String,
}

impl From<&topology_pb::DomainParameters> for ParametersView {
    fn from(p: &topology_pb::DomainParameters) -> Self {
        Self {
            participant_response_timeout_micros: p.participant_response_timeout_micros,
            participant_response_timeout: duration_text(p.participant_response_timeout_micros),
            max_request_size: p.max_request_size,
            topology_change_delay_micros: p.topology_change_delay_micros,
            topology_change_delay: duration_text(p.topology_change_delay_micros),
        }
    }
}

const PARAMETER_COLUMNS: [&str; 3] = [
    "PARTICIPANT RESPONSE TIMEOUT",
    "MAX REQUEST SIZE",
    "TOPOLOGY CHANGE DELAY",
];

impl ParametersView {
    fn cells(&self) -> Vec<String> {
        vec![
            self.participant_response_timeout.clone(),
            self.max_request_size.to_string(),
            self.topology_change_delay.clone(),
        ]
    }
}

impl Render for ParametersView {
    fn table(&self) -> String {
        let mut table = Table::new(&PARAMETER_COLUMNS).align(1, Align::Right);
        table.row(self.cells());
        table.render()
    }
}

/// `parameters set`: the parameters sent and when they take effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParametersChangeView {
    /// Topology serial of the change.
    pub serial: u64,
    /// When the change takes effect on every member.
    pub effective_at_micros: Timestamp,
    /// `effective_at_micros` as RFC3339.
    pub effective_at: Option<String>,
    /// The full parameter set that was sent.
    pub parameters: ParametersView,
}

impl Render for ParametersChangeView {
    fn table(&self) -> String {
        let mut headers = vec!["SERIAL", "EFFECTIVE AT"];
        headers.extend(PARAMETER_COLUMNS);
        let mut table = Table::new(&headers)
            .align(0, Align::Right)
            .align(3, Align::Right);
        let mut cells = vec![
            self.serial.to_string(),
            timestamp_cell(self.effective_at_micros),
        ];
        cells.extend(self.parameters.cells());
        table.row(cells);
        table.render()
    }
}

/// One component in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentView {
    /// Component name.
    pub component: String,
    /// Its endpoint.
    pub endpoint: String,
    /// `active`, `passive`, `serving`, `not-serving` or `unreachable`.
    pub state: String,
    /// Free-form detail.
    pub detail: String,
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusView {
    /// The domain id.
    pub domain_id: String,
    /// Epoch of the domain-manager lease.
    pub lease_epoch: u64,
    /// Every component the domain manager knows of.
    pub components: Vec<ComponentView>,
}

impl From<&pb::StatusResponse> for StatusView {
    fn from(status: &pb::StatusResponse) -> Self {
        Self {
            domain_id: status.domain_id.clone(),
            lease_epoch: status.lease_epoch,
            components: status
                .components
                .iter()
                .map(|c| ComponentView {
                    component: c.component.clone(),
                    endpoint: c.endpoint.clone(),
                    state: component_state_name(c.state),
                    detail: c.detail.clone(),
                })
                .collect(),
        }
    }
}

impl Render for StatusView {
    fn table(&self) -> String {
        let mut table = Table::new(&["COMPONENT", "ENDPOINT", "STATE", "DETAIL"]);
        for c in &self.components {
            table.row(vec![
                c.component.clone(),
                c.endpoint.clone(),
                c.state.clone(),
                c.detail.clone(),
            ]);
        }
        format!(
            "domain id:    {}\nlease epoch:  {}\n\n{}",
            sanitize(&self.domain_id),
            self.lease_epoch,
            table.render()
        )
    }
}

/// One member in `pruning status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberPruningView {
    /// Member id.
    pub member: String,
    /// `participant`, `mediator`, `domain-manager`, `sequencer`.
    pub kind: String,
    /// Whether the member is enabled.
    pub enabled: bool,
    /// Highest acknowledged timestamp (0: never acknowledged).
    pub acknowledged_micros: Timestamp,
    /// `acknowledged_micros` as RFC3339 (`null` when never acknowledged).
    pub acknowledged_at: Option<String>,
    /// How far the acknowledgement lies behind the sequencer clock, microseconds
    /// (`null` when never acknowledged).
    pub acknowledged_age_micros: Option<i64>,
    /// Whether the member counts for the bound at all.
    pub counted: bool,
    /// How far this member lets pruning go (0 when not counted).
    pub bound_micros: Timestamp,
    /// Whether this member is the one holding pruning back.
    pub holding_back: bool,
}

/// `pruning status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruningStatusView {
    /// Events at or below this are gone.
    pub lower_bound_micros: Timestamp,
    /// `lower_bound_micros` as RFC3339.
    pub lower_bound_at: Option<String>,
    /// Where a prune now would move the bound.
    pub candidate_bound_micros: Timestamp,
    /// `candidate_bound_micros` as RFC3339.
    pub candidate_bound_at: Option<String>,
    /// Retention window, microseconds.
    pub retention_micros: i64,
    /// The same as a humantime duration.
    pub retention: String,
    /// Safe watermark.
    pub safe_watermark_micros: Timestamp,
    /// Sequencer clock when the status was taken.
    pub now_micros: Timestamp,
    /// The member holding pruning back, if a member does.
    pub holding_back: Option<String>,
    /// Every member.
    pub members: Vec<MemberPruningView>,
    /// Exact row counts.
    pub tables: Vec<TableRowsView>,
}

/// Rows of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableRowsView {
    /// Table name.
    pub table: String,
    /// Rows.
    pub rows: u64,
}

impl From<&sequencer_admin_pb::PruningStatusResponse> for PruningStatusView {
    fn from(r: &sequencer_admin_pb::PruningStatusResponse) -> Self {
        let members: Vec<MemberPruningView> = r
            .members
            .iter()
            .map(|m| MemberPruningView {
                member: m.member.clone(),
                kind: member_kind_name(m.kind),
                enabled: m.enabled,
                acknowledged_micros: m.acknowledged_micros.into(),
                acknowledged_at: (m.acknowledged_micros > 0)
                    .then(|| rfc3339_micros(m.acknowledged_micros))
                    .flatten(),
                acknowledged_age_micros: (m.acknowledged_micros > 0)
                    .then(|| r.now_micros.saturating_sub(m.acknowledged_micros)),
                counted: m.counted,
                bound_micros: m.bound_micros.into(),
                holding_back: m.holding_back,
            })
            .collect();
        Self {
            lower_bound_micros: r.lower_bound_micros.into(),
            lower_bound_at: rfc3339_micros(r.lower_bound_micros),
            candidate_bound_micros: r.candidate_bound_micros.into(),
            candidate_bound_at: rfc3339_micros(r.candidate_bound_micros),
            retention_micros: r.retention_micros,
            retention: duration_text(r.retention_micros),
            safe_watermark_micros: r.safe_watermark_micros.into(),
            now_micros: r.now_micros.into(),
            holding_back: members
                .iter()
                .find(|m| m.holding_back)
                .map(|m| m.member.clone()),
            members,
            tables: r
                .tables
                .iter()
                .map(|t| TableRowsView {
                    table: t.table.clone(),
                    rows: t.rows,
                })
                .collect(),
        }
    }
}

impl Render for PruningStatusView {
    fn table(&self) -> String {
        let age =
            |t: Timestamp| duration_text(self.now_micros.as_micros().saturating_sub(t.as_micros()));
        let mut members = Table::new(&[
            "MEMBER",
            "KIND",
            "ENABLED",
            "ACKNOWLEDGED",
            "ACK AGE",
            "BOUND",
            "HOLDING BACK",
        ]);
        for m in &self.members {
            members.row(vec![
                m.member.clone(),
                m.kind.clone(),
                if m.enabled { "yes" } else { "no" }.to_owned(),
                if m.acknowledged_micros > Timestamp::EPOCH {
                    timestamp_cell(m.acknowledged_micros)
                } else {
                    "never".to_owned()
                },
                m.acknowledged_age_micros
                    .map_or_else(|| "-".to_owned(), duration_text),
                if m.counted {
                    timestamp_cell(m.bound_micros)
                } else {
                    "not counted".to_owned()
                },
                if m.holding_back { "yes" } else { "" }.to_owned(),
            ]);
        }
        let mut tables = Table::new(&["TABLE", "ROWS"]).align(1, Align::Right);
        for t in &self.tables {
            tables.row(vec![t.table.clone(), t.rows.to_string()]);
        }
        let bound = if self.lower_bound_micros > Timestamp::EPOCH {
            format!(
                "{} (age {})",
                timestamp_cell(self.lower_bound_micros),
                age(self.lower_bound_micros)
            )
        } else {
            "never pruned".to_owned()
        };
        format!(
            "lower bound:      {bound}\ncandidate bound:  {} (age {})\nretention:        {}\nsafe watermark:   {}\nholding back:     {}\n\n{}\n{}",
            timestamp_cell(self.candidate_bound_micros),
            age(self.candidate_bound_micros),
            self.retention,
            timestamp_cell(self.safe_watermark_micros),
            self.holding_back
                .as_deref()
                .map_or_else(|| "nobody (time limits it)".to_owned(), sanitize),
            members.render(),
            tables.render()
        )
    }
}

/// `pruning prune` / `pruning force`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneOutcomeView {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Bound before.
    pub previous_bound_micros: Timestamp,
    /// `previous_bound_micros` as RFC3339.
    pub previous_bound_at: Option<String>,
    /// Bound after (or, dry, that it would move to).
    pub bound_micros: Timestamp,
    /// `bound_micros` as RFC3339.
    pub bound_at: Option<String>,
    /// Rows deleted (dry: would be deleted) per table.
    pub deleted: Vec<TableRowsView>,
}

impl From<&sequencer_admin_pb::PruneOutcome> for PruneOutcomeView {
    fn from(o: &sequencer_admin_pb::PruneOutcome) -> Self {
        Self {
            dry_run: o.dry_run,
            previous_bound_micros: o.previous_bound_micros.into(),
            previous_bound_at: rfc3339_micros(o.previous_bound_micros),
            bound_micros: o.bound_micros.into(),
            bound_at: rfc3339_micros(o.bound_micros),
            deleted: o
                .deleted
                .iter()
                .map(|t| TableRowsView {
                    table: t.table.clone(),
                    rows: t.rows,
                })
                .collect(),
        }
    }
}

impl Render for PruneOutcomeView {
    fn table(&self) -> String {
        let mut table = Table::new(&[
            "TABLE",
            if self.dry_run {
                "WOULD DELETE"
            } else {
                "DELETED"
            },
        ])
        .align(1, Align::Right);
        for t in &self.deleted {
            table.row(vec![t.table.clone(), t.rows.to_string()]);
        }
        format!(
            "{}bound:  {} -> {}\n\n{}",
            if self.dry_run {
                "dry run, nothing changed\n"
            } else {
                ""
            },
            timestamp_cell(self.previous_bound_micros),
            timestamp_cell(self.bound_micros),
            table.render()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAR: &str =
        "PAR::alice::1220aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn table_columns_are_aligned() {
        let mut table = Table::new(&["NAME", "COUNT", "NOTE"]).align(1, Align::Right);
        table.row(vec!["a".into(), "1".into(), "x".into()]);
        table.row(vec!["longer-name".into(), "12345".into(), String::new()]);
        table.row(vec!["µ".into(), "7".into(), "last".into()]);
        assert_eq!(
            table.render(),
            "NAME         COUNT  NOTE\n\
             a                1  x\n\
             longer-name  12345\n\
             µ                7  last\n"
        );
    }

    #[test]
    fn table_with_no_rows_prints_the_header() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
    }

    #[test]
    fn table_cells_are_sanitized_and_padded() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["x\ny".into()]);
        assert_eq!(table.render(), "A     B\nx\\ny\n");
    }

    #[test]
    fn rfc3339_formatting() {
        assert_eq!(
            rfc3339_micros(0).as_deref(),
            Some("1970-01-01T00:00:00.000000Z")
        );
        assert_eq!(
            rfc3339_micros(1_714_564_800_123_456).as_deref(),
            Some("2024-05-01T12:00:00.123456Z")
        );
        assert_eq!(
            rfc3339_micros(MAX_RFC3339_MICROS - 1).as_deref(),
            Some("9999-12-31T23:59:59.999999Z")
        );
        // Out of range for RFC3339: must not panic.
        assert_eq!(rfc3339_micros(-1), None);
        assert_eq!(rfc3339_micros(MAX_RFC3339_MICROS), None);
        assert_eq!(rfc3339_micros(i64::MAX), None);
        assert_eq!(rfc3339_micros(i64::MIN), None);
        let now = domain_time::now_micros();
        assert!(rfc3339_micros(now).is_some());
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(duration_text(30_000_000), "30s");
        assert_eq!(duration_text(250_000), "250ms");
        assert_eq!(duration_text(0), "0s");
        assert_eq!(duration_text(-5), "-5us");
    }

    #[test]
    fn participant_json() {
        let info = pb::ParticipantInfo {
            participant_id: PAR.to_owned(),
            permission: topology_pb::ParticipantPermission::Confirmation as i32,
            trust_level: topology_pb::TrustLevel::Vip as i32,
            effective_at_micros: 1_714_564_800_000_001,
            serial: 42,
        };
        let view = ParticipantView::from(&info);
        let json = render(&view, OutputFormat::Json).expect("json");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(
            value,
            serde_json::json!({
                "participant_id": PAR,
                "permission": "confirmation",
                "trust_level": "vip",
                "serial": 42,
                "effective_at_micros": 1_714_564_800_000_001_i64,
                "effective_at": "2024-05-01T12:00:00.000001Z",
            })
        );
        assert!(json.ends_with("}\n"));
    }

    #[test]
    fn unknown_enum_values_are_named_not_fatal() {
        let info = pb::ParticipantInfo {
            participant_id: PAR.to_owned(),
            permission: 99,
            trust_level: 0,
            effective_at_micros: -1,
            serial: 1,
        };
        let view = ParticipantView::from(&info);
        assert_eq!(view.permission, "unknown(99)");
        assert_eq!(view.trust_level, "unspecified");
        assert_eq!(view.effective_at, None);
        assert!(view.table().contains("invalid (-1 µs)"));
    }

    #[test]
    fn participant_list_table() {
        let list = ParticipantListView {
            participants: vec![ParticipantView {
                participant_id: "PAR::a::1220ff".into(),
                permission: "submission".into(),
                trust_level: "ordinary".into(),
                serial: 7,
                effective_at_micros: Timestamp::EPOCH,
                effective_at: rfc3339_micros(0),
            }],
        };
        assert_eq!(
            list.table(),
            "PARTICIPANT     PERMISSION  TRUST     SERIAL  EFFECTIVE AT\n\
             PAR::a::1220ff  submission  ordinary       7  1970-01-01T00:00:00.000000Z\n"
        );
    }

    #[test]
    fn state_change_json_has_both_timestamp_forms() {
        let response = pb::ParticipantStateChange {
            serial: 3,
            effective_at_micros: 1_000_000,
            changed: true,
        };
        let view = StateChangeView::new(PAR.to_owned(), &response);
        let value = serde_json::to_value(&view).expect("json");
        assert_eq!(value["effective_at_micros"], 1_000_000);
        assert_eq!(value["effective_at"], "1970-01-01T00:00:01.000000Z");
        assert_eq!(value["changed"], true);
        assert_eq!(value["serial"], 3);
    }

    #[test]
    fn status_table() {
        let status = pb::StatusResponse {
            domain_id: "dom::1220ab".into(),
            lease_epoch: 4,
            components: vec![pb::ComponentStatus {
                component: "domain-manager".into(),
                endpoint: "http://dm-0:4402".into(),
                state: pb::ComponentState::Active as i32,
                detail: String::new(),
            }],
        };
        assert_eq!(
            StatusView::from(&status).table(),
            "domain id:    dom::1220ab\nlease epoch:  4\n\n\
             COMPONENT       ENDPOINT          STATE   DETAIL\n\
             domain-manager  http://dm-0:4402  active\n"
        );
    }

    #[test]
    fn mediator_with_bad_key() {
        let info = pb::MediatorInfo {
            mediator_id: "MED::m::1220ab".into(),
            public_key: Some(common_pb::PublicKey {
                algorithm: common_pb::KeyAlgorithm::Ed25519 as i32,
                key: vec![1, 2, 3],
            }),
        };
        let view = MediatorView::from(&info);
        assert_eq!(view.public_key_hex, "010203");
        assert_eq!(view.key_fingerprint, None);
        assert_eq!(view.key_algorithm, "ed25519");
    }
}
