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
//!
//! Institutions: a workitem belongs to the institution that requested it (the creator's, kept
//! beside the data set like the Transaction UID) and to its performing institutions (the Human
//! Performer's Organization (0040,4036) of each Scheduled Human Performers Sequence item,
//! derived again after every Update). A caller acting for an institution sees, changes and
//! subscribes to the workitems its institution requested or performs; any other answers as an
//! unknown workitem. Subscribers are AE titles of an institution ([`Subscriber`]): a worklist
//! subscription covers the workitems its institution sees (every workitem when the
//! deployment-wide principal made it).

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
use crate::auth::{Principal, Scope};
pub use crate::store::worklist::Subscriber;
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
/// AE titles with any subscription, per institution.
pub const MAX_SUBSCRIBERS: usize = 64;
/// Most events one read of a queue returns.
pub const EVENT_BATCH: usize = 64;
/// 2: the requesting and performing institutions beside the data set.
const RECORD_VERSION: u32 = 2;
/// The institution of the records written before workitems and subscribers had one: the local
/// principal's (`Principal::local`), so that only it (and callers of an institution named
/// `local`) sees them; nothing that was shared with every caller becomes visible to an
/// institution by guesswork.
pub const LEGACY_INSTITUTION: &str = "local";
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
    /// The institution of the principal that created it (version 1 records: none, read as
    /// [`LEGACY_INSTITUTION`]).
    #[serde(default)]
    requester: Option<String>,
    /// The performing institutions: [`performer_institutions`] of the data set, sorted (version 1
    /// records: derived when read).
    #[serde(default)]
    performers: Vec<String>,
}

impl WorkitemRecord {
    fn decode(bytes: &[u8]) -> Result<WorkitemRecord, StoreError> {
        let mut record: WorkitemRecord =
            serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("workitem record: {e}")))?;
        if record.version < 2 {
            record.performers = performer_institutions(&record.dataset()?);
        }
        Ok(record)
    }

    fn requester(&self) -> &str {
        self.requester.as_deref().unwrap_or(LEGACY_INSTITUTION)
    }

    /// Whether `institution` requested or performs the workitem (exact comparison).
    fn involves(&self, institution: &str) -> bool {
        self.requester() == institution || self.performers.iter().any(|p| p == institution)
    }

    /// Whether `principal` may see (and act on) the workitem.
    fn visible_to(&self, principal: &Principal) -> bool {
        match principal.scope {
            Scope::Deployment => true,
            Scope::Institution => self.involves(&principal.institution),
            Scope::Link(_) => false,
        }
    }

    fn dataset(&self) -> Result<Dataset, StoreError> {
        serde_json::from_str(&self.dataset).map_err(|e| StoreError::Corrupt(format!("workitem data set: {e}")))
    }
}

/// The performing institutions of a workitem: the Human Performer's Organization (0040,4036)
/// values of the Scheduled Human Performers Sequence (0040,4034) items, sorted, without
/// duplicates or empty values. They are compared exactly with principals' institution ids.
pub fn performer_institutions(workitem: &Dataset) -> Vec<String> {
    let found: BTreeSet<String> = dataset::items(workitem, tags::SCHEDULED_HUMAN_PERFORMERS_SEQUENCE)
        .filter_map(|performer| dataset::first_text(performer, tags::HUMAN_PERFORMER_ORGANIZATION))
        .filter(|organization| !organization.is_empty())
        .collect();
    found.into_iter().collect()
}

/// A worklist subscription as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct GlobalRecord {
    version: u32,
    /// The match keys of a filtered subscription; `None` for the whole worklist.
    filter: Option<Vec<MatchKey>>,
    /// Suspended: new workitems are no longer subscribed to (PS3.4 CC.2.3.1).
    suspended: bool,
    /// Made by the deployment-wide principal: covers every workitem, not only its
    /// institution's.
    #[serde(default)]
    everything: bool,
}

impl GlobalRecord {
    /// Whether the subscription covers `record` (whose data set is `workitem`) for `subscriber`.
    fn covers(&self, subscriber: &Subscriber, record: &WorkitemRecord, workitem: &Dataset) -> bool {
        (self.everything || record.involves(&subscriber.institution))
            && self.filter.as_ref().is_none_or(|keys| dataset::matches_all(workitem, keys))
    }
}

/// What the worklist keeps in memory (all of it bounded: subscribers by [`MAX_SUBSCRIBERS`],
/// queues by [`MAX_QUEUED_EVENTS`], workitem subscriptions by the workitem cap).
#[derive(Default)]
struct State {
    n_workitems: usize,
    globals: BTreeMap<Subscriber, GlobalRecord>,
    /// Workitem UID → its subscribers.
    by_workitem: HashMap<String, BTreeSet<Subscriber>>,
    /// Subscriber → subscribed workitem UIDs.
    by_subscriber: HashMap<Subscriber, BTreeSet<String>>,
    /// Subscriber → sequence numbers of its queued events, oldest first.
    queues: HashMap<Subscriber, VecDeque<u64>>,
    next_seq: u64,
    /// Subscriber → the generation of its current notification connection.
    connections: HashMap<Subscriber, u64>,
    open_connections: usize,
    generation: u64,
}

impl State {
    fn is_subscriber(&self, subscriber: &Subscriber) -> bool {
        self.globals.contains_key(subscriber) || self.by_subscriber.get(subscriber).is_some_and(|s| !s.is_empty())
    }

    /// How many subscribers `institution` has.
    fn n_subscribers(&self, institution: &str) -> usize {
        let mut all: BTreeSet<&Subscriber> = self.globals.keys().collect();
        all.extend(self.by_subscriber.iter().filter(|(_, s)| !s.is_empty()).map(|(who, _)| who));
        all.into_iter().filter(|who| who.institution == institution).count()
    }

    fn subscribe_item(&mut self, batch: &mut WorklistBatch, subscriber: &Subscriber, uid: &str) -> bool {
        let added = self.by_workitem.entry(uid.to_string()).or_default().insert(subscriber.clone());
        self.by_subscriber.entry(subscriber.clone()).or_default().insert(uid.to_string());
        if added {
            batch.put_subscription(subscriber, uid);
        }
        added
    }

    fn unsubscribe_item(&mut self, batch: &mut WorklistBatch, subscriber: &Subscriber, uid: &str) {
        if let Some(subscribers) = self.by_workitem.get_mut(uid) {
            subscribers.remove(subscriber);
            if subscribers.is_empty() {
                self.by_workitem.remove(uid);
            }
        }
        if let Some(uids) = self.by_subscriber.get_mut(subscriber) {
            uids.remove(uid);
            if uids.is_empty() {
                self.by_subscriber.remove(subscriber);
            }
        }
        batch.remove_subscription(subscriber, uid);
    }

    /// Queues `event` for each of `recipients`, in one sequence; drops a queue's oldest events
    /// beyond the bound.
    fn emit(&mut self, batch: &mut WorklistBatch, recipients: &BTreeSet<Subscriber>, event: &Value) {
        if recipients.is_empty() {
            return;
        }
        let bytes = event.to_string().into_bytes();
        for subscriber in recipients {
            self.next_seq += 1;
            let seq = self.next_seq;
            batch.enqueue(subscriber, seq, bytes.clone());
            let queue = self.queues.entry(subscriber.clone()).or_default();
            queue.push_back(seq);
            while queue.len() > MAX_QUEUED_EVENTS {
                if let Some(oldest) = queue.pop_front() {
                    batch.dequeue(subscriber, oldest);
                }
            }
        }
        batch.set_counter(SEQ_COUNTER, self.next_seq);
    }

    fn subscribers_of(&self, uid: &str) -> BTreeSet<Subscriber> {
        self.by_workitem.get(uid).cloned().unwrap_or_default()
    }

    /// Whether `subscriber` may hear of `record`: its institution requested or performs it, or
    /// its worklist subscription was made by the deployment-wide principal.
    fn may_hear(&self, subscriber: &Subscriber, record: &WorkitemRecord) -> bool {
        record.involves(&subscriber.institution) || self.globals.get(subscriber).is_some_and(|g| g.everything)
    }

    /// After the performing institutions of `uid` changed from `before`: drops the
    /// subscriptions of subscribers that may no longer hear of it, and subscribes the active
    /// worklist subscriptions that cover it now and did not before. Returns those newly
    /// subscribed.
    fn follow_performers(
        &mut self,
        batch: &mut WorklistBatch,
        uid: &str,
        before: &WorkitemRecord,
        record: &WorkitemRecord,
        workitem: &Dataset,
    ) -> BTreeSet<Subscriber> {
        for subscriber in self.subscribers_of(uid) {
            if !self.may_hear(&subscriber, record) {
                self.unsubscribe_item(batch, &subscriber, uid);
            }
        }
        let mut added = BTreeSet::new();
        let globals: Vec<(Subscriber, GlobalRecord)> =
            self.globals.iter().map(|(who, g)| (who.clone(), g.clone())).collect();
        for (subscriber, global) in globals {
            let newly = !global.everything && !before.involves(&subscriber.institution);
            if newly
                && !global.suspended
                && global.covers(&subscriber, record, workitem)
                && self.subscribe_item(batch, &subscriber, uid)
            {
                added.insert(subscriber);
            }
        }
        added
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
        // Subscriptions and queues of the format keyed by AE title alone: the legacy
        // institution's, made durable by the commit below.
        let adopted = records.adopt_legacy(LEGACY_INSTITUTION)?;
        if adopted > 0 {
            tracing::info!(
                records = adopted,
                institution = LEGACY_INSTITUTION,
                "worklist subscriptions given an institution"
            );
        }
        let mut state = State { next_seq: records.counter(SEQ_COUNTER)?, ..State::default() };
        state.n_workitems = records.workitems()?.len();
        for (subscriber, bytes) in records.globals()? {
            let record: GlobalRecord =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("subscription: {e}")))?;
            state.globals.insert(subscriber, record);
        }
        for (subscriber, uid) in records.subscriptions()? {
            state.by_workitem.entry(uid.clone()).or_default().insert(subscriber.clone());
            state.by_subscriber.entry(subscriber).or_default().insert(uid);
        }
        for (subscriber, seq) in records.queued_seqs()? {
            state.queues.entry(subscriber).or_default().push_back(seq);
        }
        let mut batch = WorklistBatch::default();
        let mut subscribers: BTreeSet<Subscriber> = state.globals.keys().cloned().collect();
        subscribers.extend(state.by_subscriber.keys().cloned());
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

    /// The workitem `uid` when `principal` may see it; otherwise exactly what an unknown
    /// workitem gives.
    fn record(&self, principal: &Principal, uid: &str) -> Result<WorkitemRecord, UpsError> {
        let unknown = || UpsError::NotFound("no such workitem".into());
        let bytes = self.records.workitem(uid)?.ok_or_else(unknown)?;
        let record = WorkitemRecord::decode(&bytes)?;
        if record.visible_to(principal) { Ok(record) } else { Err(unknown()) }
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
                requester: Some(principal.institution.clone()),
                performers: performer_institutions(&workitem),
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
            let globals: Vec<(Subscriber, GlobalRecord)> =
                state.globals.iter().map(|(who, g)| (who.clone(), g.clone())).collect();
            for (subscriber, global) in globals {
                if !global.suspended && global.covers(&subscriber, &record, &workitem) {
                    state.subscribe_item(&mut batch, &subscriber, &uid);
                    recipients.insert(subscriber);
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
    /// A workitem the caller may not see is unknown (C307).
    pub fn retrieve(&self, principal: &Principal, uid: &str) -> Result<Dataset, UpsError> {
        Ok(self.record(principal, uid)?.dataset()?)
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
            let mut record = self.record(principal, uid)?;
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
            let before = record.clone();
            record.dataset = Value::Object(workitem.clone()).to_string();
            record.performers = performer_institutions(&workitem);
            let mut batch = WorklistBatch::default();
            Self::put(&mut batch, uid, &record)?;
            if record.performers != before.performers {
                let added = state.follow_performers(&mut batch, uid, &before, &record, &workitem);
                // A worklist subscriber that now sees the workitem hears of it as on subscribing.
                state.emit(&mut batch, &added, &events::state_report(uid, record.state, &workitem));
            }
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
            let mut record = self.record(principal, uid)?;
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
            let mut record = self.record(principal, uid)?;
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
    /// Only the workitems `principal` may see are matched, so the total counts them only.
    pub fn search(
        &self,
        principal: &Principal,
        keys: &[MatchKey],
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Dataset>, usize), UpsError> {
        let mut total = 0;
        let mut page = Vec::new();
        for (_, bytes) in self.records.workitems()? {
            let record = WorkitemRecord::decode(&bytes)?;
            if !record.visible_to(principal) {
                continue;
            }
            let workitem = record.dataset()?;
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
            let subscriber = Self::subscriber(principal, ae)?;
            let mut state = self.lock();
            if !state.is_subscriber(&subscriber) && state.n_subscribers(&subscriber.institution) >= MAX_SUBSCRIBERS {
                return Err(UpsError::Full(format!(
                    "the institution has the worklist's maximum of {MAX_SUBSCRIBERS} subscribers"
                )));
            }
            let mut batch = WorklistBatch::default();
            let mut reports = Vec::new();
            match scope {
                SubscriptionScope::Workitem(uid) => {
                    let record = self.record(principal, &uid)?;
                    state.subscribe_item(&mut batch, &subscriber, &uid);
                    reports.push(events::state_report(&uid, record.state, &record.dataset()?));
                }
                SubscriptionScope::Worklist | SubscriptionScope::FilteredWorklist => {
                    let everything = principal.scope == Scope::Deployment;
                    let global = GlobalRecord { version: RECORD_VERSION, filter, suspended: false, everything };
                    batch.put_global(&subscriber, serde_json::to_vec(&global).expect("serialises"));
                    for (uid, bytes) in self.records.workitems()? {
                        let record = WorkitemRecord::decode(&bytes)?;
                        let workitem = record.dataset()?;
                        if !record.state.is_final() && global.covers(&subscriber, &record, &workitem) {
                            state.subscribe_item(&mut batch, &subscriber, &uid);
                            reports.push(events::state_report(&uid, record.state, &workitem));
                        }
                    }
                    state.globals.insert(subscriber.clone(), global);
                }
            }
            let recipient = BTreeSet::from([subscriber]);
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
            let subscriber = Self::subscriber(principal, ae)?;
            let mut state = self.lock();
            let mut batch = WorklistBatch::default();
            match scope {
                SubscriptionScope::Workitem(uid) => {
                    self.record(principal, &uid)?;
                    state.unsubscribe_item(&mut batch, &subscriber, &uid);
                }
                SubscriptionScope::Worklist | SubscriptionScope::FilteredWorklist => {
                    if !state.is_subscriber(&subscriber) {
                        return Err(UpsError::NotFound(format!("{ae} has no subscription")));
                    }
                    state.globals.remove(&subscriber);
                    batch.remove_global(&subscriber);
                    let uids: Vec<String> =
                        state.by_subscriber.get(&subscriber).map(|s| s.iter().cloned().collect()).unwrap_or_default();
                    for uid in uids {
                        state.unsubscribe_item(&mut batch, &subscriber, &uid);
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
            let subscriber = Self::subscriber(principal, ae)?;
            let mut state = self.lock();
            let Some(global) = state.globals.get_mut(&subscriber) else {
                return Err(UpsError::NotFound(format!("{ae} has no worklist subscription")));
            };
            global.suspended = true;
            let bytes = serde_json::to_vec(&*global).expect("serialises");
            let mut batch = WorklistBatch::default();
            batch.put_global(&subscriber, bytes);
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
                    for subscriber in state.subscribers_of(&uid) {
                        state.unsubscribe_item(&mut batch, &subscriber, &uid);
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

    /// Opens the notification connection of `principal`'s institution's `ae` (PS3.18 §8.10):
    /// it carries that subscriber's queue. A newer connection of the same subscriber supersedes
    /// an older one. Refused beyond the configured number of open connections.
    pub fn connect(self: &Arc<Self>, principal: &Principal, ae: &str) -> Result<NotificationConnection, UpsError> {
        let subscriber = Self::subscriber(principal, ae)?;
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
        state.connections.insert(subscriber.clone(), generation);
        drop(state);
        // Wake the connection this one supersedes.
        self.durable.send_modify(|_| {});
        Ok(NotificationConnection { worklist: self.clone(), subscriber, generation })
    }

    /// The subscriber `ae` names for `principal`: that AE title of its institution.
    fn subscriber(principal: &Principal, ae: &str) -> Result<Subscriber, UpsError> {
        validate_ae(ae)?;
        if matches!(principal.scope, Scope::Link(_)) {
            // The service refuses UPS-RS under a share link before this; a link has no institution.
            return Err(UpsError::NotFound("no such subscriber".into()));
        }
        Ok(Subscriber::new(&principal.institution, ae))
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
    subscriber: Subscriber,
    generation: u64,
}

impl NotificationConnection {
    pub fn subscriber(&self) -> &Subscriber {
        &self.subscriber
    }

    /// Whether a newer connection of the same subscriber has taken over.
    pub fn is_superseded(&self) -> bool {
        self.worklist.lock().connections.get(&self.subscriber) != Some(&self.generation)
    }

    /// Wakes when events become durable (or the connection may be superseded).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.worklist.durable.subscribe()
    }

    /// Queued events above `after` whose change is durable, oldest first, as DICOM JSON text.
    pub fn pending(&self, after: u64) -> Result<Vec<(u64, String)>, UpsError> {
        let durable = *self.worklist.durable.borrow();
        let events = self.worklist.records.queued(&self.subscriber, after, EVENT_BATCH)?;
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
        if let Some(queue) = state.queues.get_mut(&self.subscriber) {
            while queue.front().is_some_and(|front| *front <= seq) {
                if let Some(done) = queue.pop_front() {
                    batch.dequeue(&self.subscriber, done);
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
        if state.connections.get(&self.subscriber) == Some(&self.generation) {
            state.connections.remove(&self.subscriber);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Roles;

    fn principal(institution: &str, scope: Scope) -> Principal {
        Principal { subject: "t".into(), institution: institution.into(), roles: Roles::all(), key_id: None, scope }
    }

    #[test]
    fn version_1_records_belong_to_local_and_their_named_performers() {
        let dataset = serde_json::json!({"00404034": {"vr": "SQ", "Value": [
            {"00404036": {"vr": "LO", "Value": ["reading-b"]}},
            {"00404036": {"vr": "LO", "Value": [""]}},
            {"00404036": {"vr": "LO", "Value": ["reading-b"]}},
            {"00404009": {"vr": "SQ", "Value": []}}]}});
        let stored = serde_json::json!({"version": 1, "state": "Scheduled", "transaction_uid": null,
            "created": 0, "finished": null, "dataset": dataset.to_string()});
        let record = WorkitemRecord::decode(stored.to_string().as_bytes()).unwrap();
        assert_eq!(record.requester(), LEGACY_INSTITUTION);
        assert_eq!(record.performers, ["reading-b"]);
        assert!(record.visible_to(&Principal::local()));
        assert!(record.visible_to(&principal("local", Scope::Institution)));
        assert!(record.visible_to(&principal("reading-b", Scope::Institution)));
        assert!(!record.visible_to(&principal("Reading-B", Scope::Institution)), "compared exactly");
        assert!(!record.visible_to(&principal("hospital", Scope::Institution)));
        assert!(!record.visible_to(&Principal::link("s1", "hosp-a")));
    }
}
