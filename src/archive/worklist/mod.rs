//! The worklist: Unified Procedure Step workitems (PS3.4 Annex CC, served as UPS-RS, PS3.18
//! Chapter 11), their subscriptions and the event reports queued for each subscriber.
//!
//! Records live in the catalog (`store::worklist`) and every change is made durable by the
//! catalog's group commit before it is acknowledged. A change and the events it causes are one
//! atomic write: every AE title subscribed when the change happens gets its events in its own
//! queue, in the order of one sequence shared by all queues. A queue holds at most
//! [`MAX_QUEUED_EVENTS`]; beyond that its oldest events are dropped. A notification connection
//! (`dicomweb::ups_ws`) sends an AE's queued events whose change is durable and removes them
//! once delivered: when the client's WebSocket answered a Ping sent after them (see
//! [`Worklist::acknowledge`]).
//!
//! The Transaction UID is kept beside the data set, never in it, so that no retrieve or search
//! can disclose it (CC.2.7.3).

pub mod dataset;
pub mod events;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dicom_dictionary_std::tags;
use serde_json::Value;
use tokio::sync::watch;

use self::dataset::{Dataset, MatchKey, string_element};
pub use self::state::ProcedureStepState;
use self::state::Transition;
use crate::auth::Principal;
use crate::store::worklist::{WorklistBatch, WorklistStore};
use crate::store::{Store, StoreError};

/// UPS Push SOP Class: the SOP Class UID of every workitem (CC.2.5.1.3.1).
pub const UPS_PUSH_SOP_CLASS: &str = "1.2.840.10008.5.1.4.34.6.1";
/// The well-known UID that names the whole worklist in subscriptions (PS3.4 CC.3.1).
pub const GLOBAL_SUBSCRIPTION_UID: &str = "1.2.840.10008.5.1.4.34.5";
/// The well-known UID of the filtered worklist subscription.
pub const FILTERED_SUBSCRIPTION_UID: &str = "1.2.840.10008.5.1.4.34.5.1";
/// The largest workitem data set, as DICOM JSON: keeps each catalog value small (sled writes
/// larger pages to files it never fsyncs; see `store::sled_store`). A reading workitem with a
/// few hundred references is far smaller.
pub const MAX_WORKITEM_BYTES: usize = 64 * 1024;
/// Events queued per subscriber; the oldest go first when more arrive.
pub const MAX_QUEUED_EVENTS: usize = 1000;
/// AE titles with any subscription.
pub const MAX_SUBSCRIBERS: usize = 64;
/// Most events one read of a queue returns.
pub const EVENT_BATCH: usize = 64;
const RECORD_VERSION: u32 = 1;
const SEQ_COUNTER: &str = "seq";

/// Why a worklist request was refused: the DIMSE status of PS3.4 Annex CC in its name, the
/// HTTP status and Warning text of PS3.18 Chapter 11 in `error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum UpsError {
    /// C307: no such workitem (or no such subscription).
    #[error("{0}")]
    NotFound(String),
    /// 0111: a workitem with this UID exists already.
    #[error("a workitem with this UID exists already")]
    AlreadyExists,
    /// The request's data set or parameters are not acceptable (N-CREATE requirements of Table
    /// CC.2.5-3, C309, malformed DICOM JSON).
    #[error("{0}")]
    Invalid(String),
    /// C301: the Transaction UID is missing.
    #[error("the Transaction UID is missing")]
    TransactionUidMissing,
    /// C301: the Transaction UID is not the workitem's.
    #[error("the Transaction UID is incorrect")]
    TransactionUidIncorrect,
    /// C300, C302, C303, C310: the change is not valid in the workitem's state.
    #[error("{0}")]
    StateInconsistent(String),
    /// C304: the Final State requirements are not met.
    #[error("the workitem cannot be completed: missing {0}")]
    FinalStateIncomplete(String),
    /// Update of an unclaimed workitem with a Transaction UID, or of a claimed one without the
    /// right one.
    #[error("{0}")]
    NotClaimed(String),
    /// Update of a COMPLETED or CANCELED workitem.
    #[error("the workitem is {0} and may no longer be updated")]
    UpdateFinal(&'static str),
    /// C311: cancellation of a COMPLETED workitem.
    #[error("the workitem is already COMPLETED")]
    AlreadyCompleted,
    /// A bound of the worklist (workitems, subscribers, notification connections) is reached.
    #[error("{0}")]
    Full(String),
    #[error("worklist store: {0}")]
    Store(#[from] StoreError),
}

/// How the worklist is set up.
#[derive(Debug, Clone)]
pub struct WorklistOptions {
    /// How long COMPLETED and CANCELED workitems are kept before they are removed.
    pub retention: Duration,
    /// Most workitems stored at once (a create beyond it is refused).
    pub max_workitems: usize,
    /// Most notification (WebSocket) connections open at once.
    pub max_connections: usize,
}

impl Default for WorklistOptions {
    fn default() -> Self {
        WorklistOptions { retention: Duration::from_secs(168 * 3600), max_workitems: 10_000, max_connections: 256 }
    }
}

/// What a subscription covers (PS3.18 §11.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionScope {
    Workitem(String),
    /// All workitems, existing and future (the global subscription).
    Worklist,
    /// The workitems that match a filter, existing and future.
    FilteredWorklist,
}

/// A workitem as stored: the data set and what the SCP keeps beside it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct WorkitemRecord {
    version: u32,
    state: ProcedureStepState,
    /// The lock of a claimed workitem; never part of the data set.
    transaction_uid: Option<String>,
    /// Unix seconds.
    created: u64,
    /// When it became COMPLETED or CANCELED (Unix seconds).
    finished: Option<u64>,
    /// DICOM JSON text.
    dataset: String,
}

impl WorkitemRecord {
    fn decode(bytes: &[u8]) -> Result<WorkitemRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("workitem record: {e}")))
    }

    fn dataset(&self) -> Result<Dataset, StoreError> {
        serde_json::from_str(&self.dataset).map_err(|e| StoreError::Corrupt(format!("workitem data set: {e}")))
    }
}

/// A worklist subscription as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct GlobalRecord {
    version: u32,
    /// The match keys of a filtered subscription; `None` for the whole worklist.
    filter: Option<Vec<MatchKey>>,
    /// Suspended: new workitems are no longer subscribed to (PS3.4 CC.2.3.1).
    suspended: bool,
}

/// What the worklist keeps in memory (all of it bounded: subscribers by [`MAX_SUBSCRIBERS`],
/// queues by [`MAX_QUEUED_EVENTS`], workitem subscriptions by the workitem cap).
#[derive(Default)]
struct State {
    n_workitems: usize,
    globals: BTreeMap<String, GlobalRecord>,
    /// Workitem UID → subscribed AE titles.
    by_workitem: HashMap<String, BTreeSet<String>>,
    /// AE title → subscribed workitem UIDs.
    by_ae: HashMap<String, BTreeSet<String>>,
    /// AE title → sequence numbers of its queued events, oldest first.
    queues: HashMap<String, VecDeque<u64>>,
    next_seq: u64,
    /// AE title → the generation of its current notification connection.
    connections: HashMap<String, u64>,
    open_connections: usize,
    generation: u64,
}

impl State {
    fn is_subscriber(&self, ae: &str) -> bool {
        self.globals.contains_key(ae) || self.by_ae.get(ae).is_some_and(|s| !s.is_empty())
    }

    fn n_subscribers(&self) -> usize {
        let mut all: BTreeSet<&str> = self.globals.keys().map(String::as_str).collect();
        all.extend(self.by_ae.iter().filter(|(_, s)| !s.is_empty()).map(|(ae, _)| ae.as_str()));
        all.len()
    }

    fn subscribe_item(&mut self, batch: &mut WorklistBatch, ae: &str, uid: &str) -> bool {
        let added = self.by_workitem.entry(uid.to_string()).or_default().insert(ae.to_string());
        self.by_ae.entry(ae.to_string()).or_default().insert(uid.to_string());
        if added {
            batch.put_subscription(ae, uid);
        }
        added
    }

    fn unsubscribe_item(&mut self, batch: &mut WorklistBatch, ae: &str, uid: &str) {
        if let Some(aes) = self.by_workitem.get_mut(uid) {
            aes.remove(ae);
            if aes.is_empty() {
                self.by_workitem.remove(uid);
            }
        }
        if let Some(uids) = self.by_ae.get_mut(ae) {
            uids.remove(uid);
            if uids.is_empty() {
                self.by_ae.remove(ae);
            }
        }
        batch.remove_subscription(ae, uid);
    }

    /// Queues `event` for each of `recipients`, in one sequence; drops a queue's oldest events
    /// beyond the bound.
    fn emit(&mut self, batch: &mut WorklistBatch, recipients: &BTreeSet<String>, event: &Value) {
        if recipients.is_empty() {
            return;
        }
        let bytes = event.to_string().into_bytes();
        for ae in recipients {
            self.next_seq += 1;
            let seq = self.next_seq;
            batch.enqueue(ae, seq, bytes.clone());
            let queue = self.queues.entry(ae.clone()).or_default();
            queue.push_back(seq);
            while queue.len() > MAX_QUEUED_EVENTS {
                if let Some(oldest) = queue.pop_front() {
                    batch.dequeue(ae, oldest);
                }
            }
        }
        batch.set_counter(SEQ_COUNTER, self.next_seq);
    }

    fn subscribers_of(&self, uid: &str) -> BTreeSet<String> {
        self.by_workitem.get(uid).cloned().unwrap_or_default()
    }
}

/// The worklist service's core. Every mutating call takes the caller's [`Principal`].
pub struct Worklist {
    store: Arc<dyn Store>,
    records: Arc<dyn WorklistStore>,
    state: Mutex<State>,
    /// The highest event sequence number whose change is durable: connections send no event
    /// above it. Also woken when a connection is superseded.
    durable: watch::Sender<u64>,
    options: WorklistOptions,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// DICOM DT for now, in UTC with its offset (PS3.5 6.2).
fn now_dt() -> String {
    let seconds = now_unix();
    let (year, month, day) = crate::civil::date_from_days((seconds / 86_400) as i64);
    let in_day = seconds % 86_400;
    format!("{year:04}{month:02}{day:02}{:02}{:02}{:02}+0000", in_day / 3600, in_day % 3600 / 60, in_day % 60)
}

/// Validates an AE title as PS3.5 defines the AE VR: 1 to 16 characters of the default
/// repertoire without backslash or control characters, not only spaces.
pub fn validate_ae(ae: &str) -> Result<(), UpsError> {
    let ok = !ae.is_empty()
        && ae.len() <= 16
        && ae.bytes().all(|b| (0x20..0x7F).contains(&b) && b != b'\\')
        && !ae.trim().is_empty();
    if ok {
        Ok(())
    } else {
        Err(UpsError::Invalid(format!(
            "{ae:?} is not an AE title: 1 to 16 printable ASCII characters, no backslash (PS3.5 Table 6.2-1)"
        )))
    }
}

fn check_uid(uid: &str, what: &str) -> Result<(), UpsError> {
    crate::dicom::uid::validate(uid).map_err(|e| UpsError::Invalid(format!("{what} is not a valid UID: {e}")))
}

fn encode_record(record: &WorkitemRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("a record serialises")
}

impl Worklist {
    /// Loads the subscriptions and queues, and queues an SCP Status Change (restarted, warm
    /// start) for every subscriber (CC.2.4.3).
    pub async fn open(
        store: Arc<dyn Store>,
        records: Arc<dyn WorklistStore>,
        options: WorklistOptions,
    ) -> Result<Arc<Worklist>, UpsError> {
        let mut state = State { next_seq: records.counter(SEQ_COUNTER)?, ..State::default() };
        state.n_workitems = records.workitems()?.len();
        for (ae, bytes) in records.globals()? {
            let record: GlobalRecord =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("subscription: {e}")))?;
            state.globals.insert(ae, record);
        }
        for (ae, uid) in records.subscriptions()? {
            state.by_workitem.entry(uid.clone()).or_default().insert(ae.clone());
            state.by_ae.entry(ae).or_default().insert(uid);
        }
        for (ae, seq) in records.queued_seqs()? {
            state.queues.entry(ae).or_default().push_back(seq);
        }
        let mut batch = WorklistBatch::default();
        let mut subscribers: BTreeSet<String> = state.globals.keys().cloned().collect();
        subscribers.extend(state.by_ae.keys().cloned());
        state.emit(&mut batch, &subscribers, &events::restarted());
        let durable = state.next_seq;
        records.apply(batch)?;
        store.commit().await?;
        let (sender, _) = watch::channel(durable);
        Ok(Arc::new(Worklist { store, records, state: Mutex::new(state), durable: sender, options }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, uid: &str) -> Result<WorkitemRecord, UpsError> {
        let bytes = self.records.workitem(uid)?.ok_or_else(|| UpsError::NotFound("no such workitem".into()))?;
        Ok(WorkitemRecord::decode(&bytes)?)
    }

    /// Writes `batch` (under the state lock, so that sequence order is write order) and
    /// releases the lock; returns the last sequence number written.
    fn write(&self, state: std::sync::MutexGuard<'_, State>, batch: WorklistBatch) -> Result<u64, UpsError> {
        let written = state.next_seq;
        if !batch.is_empty() {
            self.records.apply(batch)?;
        }
        drop(state);
        Ok(written)
    }

    /// Makes everything written durable (group commit), then lets connections send the events
    /// up to `written`.
    async fn make_durable(&self, written: u64) -> Result<(), UpsError> {
        self.store.commit().await?;
        self.durable.send_if_modified(|durable| {
            let moved = written > *durable;
            *durable = (*durable).max(written);
            moved
        });
        Ok(())
    }

    fn put(batch: &mut WorklistBatch, uid: &str, record: &WorkitemRecord) -> Result<(), UpsError> {
        if record.dataset.len() > MAX_WORKITEM_BYTES {
            return Err(UpsError::Invalid(format!(
                "the workitem would be larger than {MAX_WORKITEM_BYTES} bytes of DICOM JSON"
            )));
        }
        batch.put_workitem(uid, encode_record(record));
        Ok(())
    }

    /// Create (PS3.18 §11.4, N-CREATE): checks the N-CREATE requirements, sets what the SCP
    /// owns, stores the workitem SCHEDULED with no Transaction UID, subscribes the worklist
    /// subscribers whose filter it matches, and sends them a State Report (and UPS Assigned
    /// when it names a performer or station). Returns the UID and whether the data set was
    /// modified (the Warning of §11.4.3.2).
    pub async fn create(
        &self,
        principal: &Principal,
        uid_in_request: Option<&str>,
        mut workitem: Dataset,
    ) -> Result<(String, bool), UpsError> {
        let (result, written) = (|| -> Result<_, UpsError> {
            dataset::check_shape(&workitem, 8).map_err(UpsError::Invalid)?;
            let in_dataset = dataset::first_text(&workitem, tags::SOP_INSTANCE_UID);
            let uid = match (uid_in_request, in_dataset.as_deref()) {
                (Some(url), Some(body)) if url != body => {
                    return Err(UpsError::Invalid(
                        "the Workitem UID in the request differs from the SOP Instance UID (0008,0018) of the data set"
                            .into(),
                    ));
                }
                (Some(uid), _) | (None, Some(uid)) => uid.to_string(),
                (None, None) => {
                    return Err(UpsError::Invalid(
                        "no Workitem UID: give it as POST /workitems?{uid} or in SOP Instance UID (0008,0018)".into(),
                    ));
                }
            };
            check_uid(&uid, "the Workitem UID")?;
            check_create_requirements(&workitem)?;
            let mut modified = false;
            let class = dataset::key(tags::SOP_CLASS_UID);
            match dataset::first_text(&workitem, tags::SOP_CLASS_UID) {
                Some(class_uid) if class_uid == UPS_PUSH_SOP_CLASS => {}
                given => {
                    modified = given.is_some();
                    workitem.insert(class, string_element("UI", UPS_PUSH_SOP_CLASS));
                }
            }
            workitem.insert(dataset::key(tags::SOP_INSTANCE_UID), string_element("UI", &uid));
            let record = WorkitemRecord {
                version: RECORD_VERSION,
                state: ProcedureStepState::Scheduled,
                transaction_uid: None,
                created: now_unix(),
                finished: None,
                dataset: Value::Object(workitem.clone()).to_string(),
            };
            let mut batch = WorklistBatch::default();
            Self::put(&mut batch, &uid, &record)?;
            let mut state = self.lock();
            if self.records.workitem(&uid)?.is_some() {
                return Err(UpsError::AlreadyExists);
            }
            if state.n_workitems >= self.options.max_workitems {
                return Err(UpsError::Full(format!(
                    "the worklist holds its maximum of {} workitems (--max-workitems)",
                    self.options.max_workitems
                )));
            }
            state.n_workitems += 1;
            let mut recipients = BTreeSet::new();
            let globals: Vec<(String, GlobalRecord)> =
                state.globals.iter().map(|(ae, g)| (ae.clone(), g.clone())).collect();
            for (ae, global) in globals {
                let wanted = global.filter.as_ref().is_none_or(|keys| dataset::matches_all(&workitem, keys));
                if !global.suspended && wanted {
                    state.subscribe_item(&mut batch, &ae, &uid);
                    recipients.insert(ae);
                }
            }
            state.emit(&mut batch, &recipients, &events::state_report(&uid, ProcedureStepState::Scheduled, &workitem));
            if events::has_assignment(&workitem) {
                state.emit(&mut batch, &recipients, &events::assigned(&uid, &workitem));
            }
            tracing::debug!(caller = %principal.subject, workitem = %uid, "workitem created");
            Ok(((uid, modified), self.write(state, batch)?))
        })()?;
        self.make_durable(written).await?;
        Ok(result)
    }

    /// Retrieve (PS3.18 §11.5, N-GET): the data set, never with the Transaction UID.
    pub fn retrieve(&self, _principal: &Principal, uid: &str) -> Result<Dataset, UpsError> {
        Ok(self.record(uid)?.dataset()?)
    }

    /// Update (PS3.18 §11.6, N-SET; PS3.4 CC.2.6): replaces the attributes the request carries
    /// (a sequence whole). A SCHEDULED workitem is updated without a Transaction UID, an IN
    /// PROGRESS one only with its own; final ones not at all. Sends Progress, State (Input
    /// Readiness) and Assigned events for what changed.
    pub async fn update(
        &self,
        principal: &Principal,
        uid: &str,
        transaction_uid: Option<&str>,
        changes: Dataset,
    ) -> Result<(), UpsError> {
        let (result, written) = (|| -> Result<_, UpsError> {
            dataset::check_shape(&changes, 8).map_err(UpsError::Invalid)?;
            let mut state = self.lock();
            let mut record = self.record(uid)?;
            match (record.state, transaction_uid) {
                (current, _) if current.is_final() => return Err(UpsError::UpdateFinal(current.as_str())),
                (ProcedureStepState::Scheduled, Some(_)) => {
                    return Err(UpsError::NotClaimed(
                        "the workitem is SCHEDULED (not claimed): update it without a Transaction UID".into(),
                    ));
                }
                (ProcedureStepState::InProgress, given) if given != record.transaction_uid.as_deref() => {
                    return Err(UpsError::NotClaimed(match given {
                        None => "the workitem is IN PROGRESS: the update needs its Transaction UID".into(),
                        Some(_) => "the Transaction UID is not the one that claimed the workitem".into(),
                    }));
                }
                _ => {}
            }
            if changes.contains_key(&dataset::key(tags::TRANSACTION_UID)) {
                return Err(UpsError::Invalid(
                    "the Transaction UID (0008,1195) goes in the query (?transaction-uid=), not the data set".into(),
                ));
            }
            if let Some(new_state) = changes
                .get(&dataset::key(tags::PROCEDURE_STEP_STATE))
                .map(|_| dataset::first_text(&changes, tags::PROCEDURE_STEP_STATE).unwrap_or_default())
                && new_state != record.state.as_str()
            {
                return Err(UpsError::Invalid(
                    "Update does not change the Procedure Step State (0074,1000); use PUT …/state (PS3.4 CC.2.6.3)"
                        .into(),
                ));
            }
            for tag in [tags::SOP_INSTANCE_UID, tags::SOP_CLASS_UID] {
                if let Some(given) = dataset::first_text(&changes, tag) {
                    let current = dataset::first_text(&record.dataset()?, tag).unwrap_or_default();
                    if given != current {
                        return Err(UpsError::Invalid(format!("{} cannot be changed by Update", dataset::key(tag))));
                    }
                }
            }
            let mut workitem = record.dataset()?;
            let changed = |tag| {
                let name = dataset::key(tag);
                changes.get(&name).is_some_and(|new| workitem.get(&name) != Some(new))
            };
            let progress = changed(tags::PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE);
            let readiness = changed(tags::INPUT_READINESS_STATE);
            let assignment = changed(tags::SCHEDULED_STATION_NAME_CODE_SEQUENCE)
                || changed(tags::SCHEDULED_HUMAN_PERFORMERS_SEQUENCE);
            for (name, value) in changes {
                workitem.insert(name, value);
            }
            record.dataset = Value::Object(workitem.clone()).to_string();
            let mut batch = WorklistBatch::default();
            Self::put(&mut batch, uid, &record)?;
            let recipients = state.subscribers_of(uid);
            if readiness {
                state.emit(&mut batch, &recipients, &events::state_report(uid, record.state, &workitem));
            }
            if progress {
                state.emit(&mut batch, &recipients, &events::progress_report(uid, &workitem));
            }
            if assignment {
                state.emit(&mut batch, &recipients, &events::assigned(uid, &workitem));
            }
            tracing::debug!(caller = %principal.subject, workitem = %uid, "workitem updated");
            Ok(((), self.write(state, batch)?))
        })()?;
        self.make_durable(written).await?;
        Ok(result)
    }

    /// Change State (PS3.18 §11.7, N-ACTION type 1): claim, complete or cancel, per Table
    /// CC.1.1-2. Returns the state the workitem was already in when the request asked for it
    /// (a success with the Warning of §11.7.3.2).
    pub async fn change_state(
        &self,
        principal: &Principal,
        uid: &str,
        transaction_uid: Option<&str>,
        target: &str,
    ) -> Result<Option<ProcedureStepState>, UpsError> {
        let (result, written) = (|| -> Result<_, UpsError> {
            let target = ProcedureStepState::parse(target).ok_or_else(|| {
                UpsError::Invalid(format!(
                    "{target:?} is not a Procedure Step State: SCHEDULED, IN PROGRESS, COMPLETED or CANCELED"
                ))
            })?;
            if let Some(given) = transaction_uid {
                check_uid(given, "the Transaction UID")?;
            }
            let mut state = self.lock();
            let mut record = self.record(uid)?;
            let transition =
                state::change_state(record.state, record.transaction_uid.as_deref(), target, transaction_uid)?;
            let mut workitem = record.dataset()?;
            match transition {
                Transition::AlreadyThere(current) => return Ok((Some(current), 0)),
                Transition::Claim => record.transaction_uid = transaction_uid.map(str::to_string),
                Transition::Finish(ProcedureStepState::Completed) => {
                    let missing = state::missing_for_completion(&workitem);
                    if !missing.is_empty() {
                        return Err(UpsError::FinalStateIncomplete(missing.join(", ")));
                    }
                    record.finished = Some(now_unix());
                }
                Transition::Finish(_) => {
                    // CC.2.5.1.3.2 note: a performer may cancel without first recording the
                    // cancellation; the SCP fills in the Cancellation DateTime (X in Table CC.2.5-3).
                    mark_canceled(&mut workitem, None);
                    record.finished = Some(now_unix());
                }
            }
            record.state = target;
            workitem.insert(dataset::key(tags::PROCEDURE_STEP_STATE), string_element("CS", target.as_str()));
            record.dataset = Value::Object(workitem.clone()).to_string();
            let mut batch = WorklistBatch::default();
            Self::put(&mut batch, uid, &record)?;
            let recipients = state.subscribers_of(uid);
            state.emit(&mut batch, &recipients, &events::state_report(uid, target, &workitem));
            tracing::debug!(caller = %principal.subject, workitem = %uid, state = target.as_str(), "workitem state changed");
            Ok((None, self.write(state, batch)?))
        })()?;
        self.make_durable(written).await?;
        Ok(result)
    }

    /// Request Cancellation (PS3.18 §11.8, N-ACTION type 2). A SCHEDULED workitem is canceled
    /// by the SCP itself (IN PROGRESS, then CANCELED, a State Report for each; CC.1.1); for an
    /// IN PROGRESS one the subscribers get UPS Cancel Requested and the performer decides.
    /// Returns whether it was CANCELED already (success with a Warning).
    pub async fn request_cancellation(
        &self,
        principal: &Principal,
        uid: &str,
        requesting_ae: &str,
        request: Dataset,
    ) -> Result<bool, UpsError> {
        let (result, written) = (|| -> Result<_, UpsError> {
            dataset::check_shape(&request, 8).map_err(UpsError::Invalid)?;
            let mut state = self.lock();
            let mut record = self.record(uid)?;
            let mut batch = WorklistBatch::default();
            let recipients = state.subscribers_of(uid);
            match record.state {
                ProcedureStepState::Completed => return Err(UpsError::AlreadyCompleted),
                ProcedureStepState::Canceled => return Ok((true, 0)),
                ProcedureStepState::InProgress => {
                    state.emit(&mut batch, &recipients, &events::cancel_requested(uid, requesting_ae, &request));
                }
                ProcedureStepState::Scheduled => {
                    let mut workitem = record.dataset()?;
                    state.emit(
                        &mut batch,
                        &recipients,
                        &events::state_report(uid, ProcedureStepState::InProgress, &workitem),
                    );
                    mark_canceled(&mut workitem, Some(&request));
                    workitem.insert(
                        dataset::key(tags::PROCEDURE_STEP_STATE),
                        string_element("CS", ProcedureStepState::Canceled.as_str()),
                    );
                    record.state = ProcedureStepState::Canceled;
                    record.finished = Some(now_unix());
                    record.dataset = Value::Object(workitem.clone()).to_string();
                    Self::put(&mut batch, uid, &record)?;
                    state.emit(
                        &mut batch,
                        &recipients,
                        &events::state_report(uid, ProcedureStepState::Canceled, &workitem),
                    );
                }
            }
            tracing::debug!(caller = %principal.subject, workitem = %uid, "cancellation requested");
            Ok((false, self.write(state, batch)?))
        })()?;
        self.make_durable(written).await?;
        Ok(result)
    }

    /// Search (PS3.18 §11.9, C-FIND): the workitems matching every key, in UID order, from
    /// `offset`, at most `limit`, and how many matched in all. Runs over the stored workitems
    /// (at most `--max-workitems`), parsing each: no index.
    pub fn search(
        &self,
        _principal: &Principal,
        keys: &[MatchKey],
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Dataset>, usize), UpsError> {
        let mut total = 0;
        let mut page = Vec::new();
        for (_, bytes) in self.records.workitems()? {
            let workitem = WorkitemRecord::decode(&bytes)?.dataset()?;
            if dataset::matches_all(&workitem, keys) {
                if total >= offset && page.len() < limit {
                    page.push(workitem);
                }
                total += 1;
            }
        }
        Ok((page, total))
    }

    /// Subscribe (PS3.18 §11.10, N-ACTION type 3). A workitem subscription sends its State
    /// Report; a worklist subscription (filtered or not) subscribes the AE to every workitem
    /// not yet final that it covers, with a State Report for each, and to new ones as they
    /// are created. Deletion locks are never granted: returns `false` when one was asked for.
    pub async fn subscribe(
        &self,
        principal: &Principal,
        ae: &str,
        scope: SubscriptionScope,
        filter: Option<Vec<MatchKey>>,
        deletion_lock: bool,
    ) -> Result<bool, UpsError> {
        let (result, written) = (|| -> Result<_, UpsError> {
            validate_ae(ae)?;
            let mut state = self.lock();
            if !state.is_subscriber(ae) && state.n_subscribers() >= MAX_SUBSCRIBERS {
                return Err(UpsError::Full(format!("the worklist has its maximum of {MAX_SUBSCRIBERS} subscribers")));
            }
            let mut batch = WorklistBatch::default();
            let mut reports = Vec::new();
            match scope {
                SubscriptionScope::Workitem(uid) => {
                    let record = self.record(&uid)?;
                    state.subscribe_item(&mut batch, ae, &uid);
                    reports.push(events::state_report(&uid, record.state, &record.dataset()?));
                }
                SubscriptionScope::Worklist | SubscriptionScope::FilteredWorklist => {
                    let global = GlobalRecord { version: RECORD_VERSION, filter, suspended: false };
                    batch.put_global(ae, serde_json::to_vec(&global).expect("serialises"));
                    for (uid, bytes) in self.records.workitems()? {
                        let record = WorkitemRecord::decode(&bytes)?;
                        let workitem = record.dataset()?;
                        let wanted = global.filter.as_ref().is_none_or(|keys| dataset::matches_all(&workitem, keys));
                        if !record.state.is_final() && wanted {
                            state.subscribe_item(&mut batch, ae, &uid);
                            reports.push(events::state_report(&uid, record.state, &workitem));
                        }
                    }
                    state.globals.insert(ae.to_string(), global);
                }
            }
            let recipient = BTreeSet::from([ae.to_string()]);
            for report in reports {
                state.emit(&mut batch, &recipient, &report);
            }
            tracing::debug!(caller = %principal.subject, "subscribed");
            Ok((!deletion_lock, self.write(state, batch)?))
        })()?;
        self.make_durable(written).await?;
        Ok(result)
    }

    /// Unsubscribe (PS3.18 §11.11, N-ACTION type 4). From the worklist (filtered or not): every
    /// subscription of the AE goes, its workitem subscriptions too (CC.2.3 note).
    pub async fn unsubscribe(&self, principal: &Principal, ae: &str, scope: SubscriptionScope) -> Result<(), UpsError> {
        let (result, written) = (|| -> Result<_, UpsError> {
            validate_ae(ae)?;
            let mut state = self.lock();
            let mut batch = WorklistBatch::default();
            match scope {
                SubscriptionScope::Workitem(uid) => {
                    self.record(&uid)?;
                    state.unsubscribe_item(&mut batch, ae, &uid);
                }
                SubscriptionScope::Worklist | SubscriptionScope::FilteredWorklist => {
                    if !state.is_subscriber(ae) {
                        return Err(UpsError::NotFound(format!("{ae} has no subscription")));
                    }
                    state.globals.remove(ae);
                    batch.remove_global(ae);
                    let uids: Vec<String> =
                        state.by_ae.get(ae).map(|s| s.iter().cloned().collect()).unwrap_or_default();
                    for uid in uids {
                        state.unsubscribe_item(&mut batch, ae, &uid);
                    }
                }
            }
            tracing::debug!(caller = %principal.subject, "unsubscribed");
            Ok(((), self.write(state, batch)?))
        })()?;
        self.make_durable(written).await?;
        Ok(result)
    }

    /// Suspend a worklist subscription (PS3.18 §11.12, N-ACTION type 5): new workitems are no
    /// longer subscribed to; the existing subscriptions stay.
    pub async fn suspend(&self, principal: &Principal, ae: &str) -> Result<(), UpsError> {
        let (result, written) = (|| -> Result<_, UpsError> {
            validate_ae(ae)?;
            let mut state = self.lock();
            let Some(global) = state.globals.get_mut(ae) else {
                return Err(UpsError::NotFound(format!("{ae} has no worklist subscription")));
            };
            global.suspended = true;
            let bytes = serde_json::to_vec(&*global).expect("serialises");
            let mut batch = WorklistBatch::default();
            batch.put_global(ae, bytes);
            tracing::debug!(caller = %principal.subject, "worklist subscription suspended");
            Ok(((), self.write(state, batch)?))
        })()?;
        self.make_durable(written).await?;
        Ok(result)
    }

    /// Removes COMPLETED and CANCELED workitems finished more than the retention ago, with
    /// their subscriptions. Returns how many went.
    pub async fn sweep(&self) -> Result<usize, UpsError> {
        let (result, written) = (|| -> Result<_, UpsError> {
            let cutoff = now_unix().saturating_sub(self.options.retention.as_secs());
            let mut state = self.lock();
            let mut batch = WorklistBatch::default();
            let mut removed = 0;
            for (uid, bytes) in self.records.workitems()? {
                let record = WorkitemRecord::decode(&bytes)?;
                if record.state.is_final() && record.finished.is_some_and(|finished| finished <= cutoff) {
                    batch.remove_workitem(&uid);
                    for ae in state.subscribers_of(&uid) {
                        state.unsubscribe_item(&mut batch, &ae, &uid);
                    }
                    removed += 1;
                }
            }
            if removed == 0 {
                return Ok((0, 0));
            }
            state.n_workitems = state.n_workitems.saturating_sub(removed);
            Ok((removed, self.write(state, batch)?))
        })()?;
        self.make_durable(written).await?;
        Ok(result)
    }

    /// How often [`Worklist::sweep`] should run: a fraction of the retention, 1 s to 1 min.
    pub fn sweep_interval(&self) -> Duration {
        (self.options.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Opens a notification connection for `ae` (PS3.18 §8.10). A newer connection of the same
    /// AE supersedes an older one. Refused beyond the configured number of open connections.
    pub fn connect(self: &Arc<Self>, ae: &str) -> Result<NotificationConnection, UpsError> {
        validate_ae(ae)?;
        let mut state = self.lock();
        if state.open_connections >= self.options.max_connections {
            return Err(UpsError::Full(format!(
                "{} notification connections are open (--max-notification-connections)",
                self.options.max_connections
            )));
        }
        state.open_connections += 1;
        state.generation += 1;
        let generation = state.generation;
        state.connections.insert(ae.to_string(), generation);
        drop(state);
        // Wake the connection this one supersedes.
        self.durable.send_modify(|_| {});
        Ok(NotificationConnection { worklist: self.clone(), ae: ae.to_string(), generation })
    }
}

/// Records a cancellation in the Procedure Step Progress Information Sequence: the
/// Cancellation DateTime when missing, and the reason and contact a cancel request carried.
fn mark_canceled(workitem: &mut Dataset, request: Option<&Dataset>) {
    let name = dataset::key(tags::PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE);
    let mut item: Dataset = dataset::items(workitem, tags::PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE)
        .next()
        .cloned()
        .unwrap_or_default();
    if !dataset::has_value(&item, tags::PROCEDURE_STEP_CANCELLATION_DATE_TIME) {
        item.insert(dataset::key(tags::PROCEDURE_STEP_CANCELLATION_DATE_TIME), string_element("DT", &now_dt()));
    }
    if let Some(request) = request {
        for tag in [
            tags::REASON_FOR_CANCELLATION,
            tags::PROCEDURE_STEP_DISCONTINUATION_REASON_CODE_SEQUENCE,
            tags::CONTACT_URI,
            tags::CONTACT_DISPLAY_NAME,
        ] {
            if let Some(value) = request.get(&dataset::key(tag)) {
                item.insert(dataset::key(tag), value.clone());
            }
        }
    }
    workitem.insert(name, dataset::element("SQ", vec![Value::Object(item)]));
}

/// The N-CREATE requirements Kura checks (PS3.4 Table CC.2.5-3, as far as the digest
/// confirms them plus the type 1 scheduling attributes): Procedure Step State SCHEDULED
/// (C309), priority, label, start date-time and input readiness present, no Transaction UID,
/// an empty Progress Information Sequence.
fn check_create_requirements(workitem: &Dataset) -> Result<(), UpsError> {
    match dataset::first_text(workitem, tags::PROCEDURE_STEP_STATE).as_deref() {
        Some("SCHEDULED") => {}
        Some(other) => {
            return Err(UpsError::Invalid(format!(
                "Procedure Step State (0074,1000) must be SCHEDULED at creation, not {other:?} (C309)"
            )));
        }
        None => {
            return Err(UpsError::Invalid("Procedure Step State (0074,1000) is missing; it must be SCHEDULED".into()));
        }
    }
    let mut missing = Vec::new();
    for (tag, name) in [
        (tags::SCHEDULED_PROCEDURE_STEP_PRIORITY, "ScheduledProcedureStepPriority (0074,1200)"),
        (tags::PROCEDURE_STEP_LABEL, "ProcedureStepLabel (0074,1204)"),
        (tags::SCHEDULED_PROCEDURE_STEP_START_DATE_TIME, "ScheduledProcedureStepStartDateTime (0040,4005)"),
        (tags::INPUT_READINESS_STATE, "InputReadinessState (0040,4041)"),
    ] {
        if !dataset::has_value(workitem, tag) {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        return Err(UpsError::Invalid(format!("required attributes are missing: {}", missing.join(", "))));
    }
    if let Some(priority) = dataset::first_text(workitem, tags::SCHEDULED_PROCEDURE_STEP_PRIORITY)
        && !["HIGH", "MEDIUM", "LOW"].contains(&priority.as_str())
    {
        return Err(UpsError::Invalid(format!(
            "ScheduledProcedureStepPriority {priority:?} is not HIGH, MEDIUM or LOW"
        )));
    }
    if let Some(readiness) = dataset::first_text(workitem, tags::INPUT_READINESS_STATE)
        && !["READY", "UNAVAILABLE", "INCOMPLETE"].contains(&readiness.as_str())
    {
        return Err(UpsError::Invalid(format!(
            "InputReadinessState {readiness:?} is not READY, UNAVAILABLE or INCOMPLETE"
        )));
    }
    if workitem.contains_key(&dataset::key(tags::TRANSACTION_UID)) {
        return Err(UpsError::Invalid("a new workitem carries no Transaction UID (0008,1195)".into()));
    }
    if dataset::has_value(workitem, tags::PROCEDURE_STEP_PROGRESS_INFORMATION_SEQUENCE) {
        return Err(UpsError::Invalid(
            "the Procedure Step Progress Information Sequence (0074,1002) must be empty at creation".into(),
        ));
    }
    Ok(())
}

/// One AE's open notification connection: reads its queue, acknowledges what was delivered.
/// Dropping it closes its slot.
pub struct NotificationConnection {
    worklist: Arc<Worklist>,
    ae: String,
    generation: u64,
}

impl NotificationConnection {
    pub fn ae(&self) -> &str {
        &self.ae
    }

    /// Whether a newer connection of the same AE has taken over.
    pub fn is_superseded(&self) -> bool {
        self.worklist.lock().connections.get(&self.ae) != Some(&self.generation)
    }

    /// Wakes when events become durable (or the connection may be superseded).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.worklist.durable.subscribe()
    }

    /// Queued events above `after` whose change is durable, oldest first, as DICOM JSON text.
    pub fn pending(&self, after: u64) -> Result<Vec<(u64, String)>, UpsError> {
        let durable = *self.worklist.durable.borrow();
        let events = self.worklist.records.queued(&self.ae, after, EVENT_BATCH)?;
        Ok(events
            .into_iter()
            .filter(|(seq, _)| *seq <= durable)
            .map(|(seq, bytes)| (seq, String::from_utf8_lossy(&bytes).into_owned()))
            .collect())
    }

    /// Removes the queued events up to `seq`: the client's WebSocket answered a Ping sent after
    /// them, and a WebSocket peer processes frames in order, so it has received them. Not
    /// committed on its own: a crash before the next commit sends them again (at least once).
    pub fn acknowledge(&self, seq: u64) -> Result<(), UpsError> {
        let mut state = self.worklist.lock();
        let mut batch = WorklistBatch::default();
        if let Some(queue) = state.queues.get_mut(&self.ae) {
            while queue.front().is_some_and(|front| *front <= seq) {
                if let Some(done) = queue.pop_front() {
                    batch.dequeue(&self.ae, done);
                }
            }
        }
        if !batch.is_empty() {
            self.worklist.records.apply(batch)?;
        }
        Ok(())
    }
}

impl Drop for NotificationConnection {
    fn drop(&mut self) {
        let mut state = self.worklist.lock();
        state.open_connections = state.open_connections.saturating_sub(1);
        if state.connections.get(&self.ae) == Some(&self.generation) {
            state.connections.remove(&self.ae);
        }
    }
}
