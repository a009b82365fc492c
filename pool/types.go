// Package pool is the engine of sandboxpool: it keeps a pool of warm sandboxes
// at its target over two small interfaces, Backend (what runs sandboxes) and
// Store (where the pool's references live, shared by every process of a pool).
// It knows nothing of the screen, of HTTP or of Modal.
package pool

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// State is what a sandbox is doing now, as shown everywhere (dashboard, JSON).
type State string

const (
	StateCreating    State = "creating"    // backend asked
	StateWarming     State = "warming"     // running, not yet healthy
	StateReady       State = "ready"       // healthy, in the pool, not claimed
	StateUnhealthy   State = "unhealthy"   // in the pool, failed its last health check
	StateExpiring    State = "expiring"    // in the pool, less than use-duration left
	StateClaimed     State = "claimed"     // handed out; the claimer's now
	StateTerminating State = "terminating" // being terminated
	StateFailed      State = "failed"      // could not be made ready; it was terminated
)

// States lists every state in display order.
var States = []State{StateCreating, StateWarming, StateReady, StateUnhealthy, StateExpiring, StateClaimed, StateTerminating, StateFailed}

// Ref is what a backend returns for a new sandbox and what a store keeps.
type Ref struct {
	ID        string    `json:"id"`
	URL       string    `json:"url"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	// Claimed is set by a ClaimRecorder's List for a sandbox it recorded as
	// claimed: reconcile never adopts it into the pool. Not stored.
	Claimed bool `json:"-"`
	// Workload is what it runs, as WorkloadBackend.Workload says it, when
	// the backend's List knows ("" otherwise). Not stored.
	Workload string `json:"-"`
}

// Entry is one sandbox recorded in a store: pooled (ClaimedBy empty) or claimed.
type Entry struct {
	Ref
	ClaimedBy string    `json:"claimed_by,omitempty"`
	ClaimedAt time.Time `json:"claimed_at,omitzero"`
}

// Claimed reports whether the entry was handed out.
func (e Entry) Claimed() bool { return e.ClaimedBy != "" }

// Stored is the whole durable pool as one read of the store sees it.
type Stored struct {
	// Target is the stored target; HasTarget is false for a pool never sized.
	Target    int
	HasTarget bool
	// TTL and UseDuration are the pool's timing as its controller set it
	// (zero when never set): every process of a pool must agree on what
	// "good" means, or a claim would drop sandboxes the controller keeps.
	TTL         time.Duration
	UseDuration time.Duration
	// Workload is what the pool's sandboxes run, as its backend describes
	// it (WorkloadBackend; "" when never stored): every process that
	// creates sandboxes for the pool creates these, whatever its own flags.
	Workload string
	// Entries in pool order (oldest first), claimed ones included.
	Entries []Entry
	// Epoch changes when the store was lost (moved away, deleted, a queue
	// cleared) or went back in time (an older copy put back) since this
	// process opened it. Its entries then went missing without anyone
	// removing them: the live sandboxes the process knew as pooled are
	// adopted again before anything is created to replace them.
	Epoch uint64
	// EpochWhy says what happened at the last Epoch change, for people
	// ("/state/p.json was moved away or deleted"); "" when unknown.
	EpochWhy string
}

// Pooled returns the unclaimed entries in pool order.
func (s Stored) Pooled() []Entry {
	out := make([]Entry, 0, len(s.Entries))
	for _, e := range s.Entries {
		if !e.Claimed() {
			out = append(out, e)
		}
	}
	return out
}

// Backend runs sandboxes. Implementations: the local process backend and the
// Modal adapter. Every method must be safe for concurrent use.
type Backend interface {
	// Name is "local" or "modal".
	Name() string
	// Create starts one sandbox that the backend kills at now+ttl, and returns
	// its reference as soon as its URL is known (it may not answer yet).
	Create(ctx context.Context, ttl time.Duration) (Ref, error)
	// Terminate stops a sandbox. Terminating one that is already gone is not an error.
	Terminate(ctx context.Context, id string) error
	// List returns the sandboxes of this pool that really run now.
	List(ctx context.Context) ([]Ref, error)
}

// Store is the durable pool that every process of one pool shares. Every
// method is atomic across processes.
type Store interface {
	// Load reads the whole pool without changing it.
	Load(ctx context.Context) (Stored, error)
	// Put appends a ready sandbox to the pool. Putting an id that is already
	// recorded changes nothing. A store that remembers ids it decided (Modal's
	// bids) returns ErrNotPooled for one removed or dropped before: it is not
	// the pool's, and reconcile terminates it; and ErrAlreadyClaimed for one
	// it finds a claim of (a bid, or Modal tags, that outlived a lost claim
	// record), which it records claimed again: its claimer's, never pooled.
	Put(ctx context.Context, ref Ref) error
	// Take atomically claims the first pooled entry whose ExpiresAt is at or
	// after r.MinExpiresAt for r.ClaimedBy. Pooled entries before it that
	// expire too soon are removed and returned as dropped (the caller
	// terminates them), unless r.KeepShort: then they are skipped and stay
	// pooled. ok is false when no such entry exists; dropped entries are
	// removed even then.
	Take(ctx context.Context, r TakeRequest) (taken Entry, dropped []Entry, ok bool, err error)
	// Remove deletes entries (pooled or claimed) by id and returns those it found.
	Remove(ctx context.Context, ids ...string) ([]Entry, error)
	// Evict deletes pooled entries by id and returns those it found; an entry
	// claimed meanwhile is left alone (it is the claimer's now).
	Evict(ctx context.Context, ids ...string) ([]Entry, error)
	// SetTarget stores the target.
	SetTarget(ctx context.Context, n int) error
	// SetTiming stores the pool's ttl and use-duration.
	SetTiming(ctx context.Context, ttl, use time.Duration) error
	// SetWorkload stores what the pool's sandboxes run (Stored.Workload).
	SetWorkload(ctx context.Context, w string) error
	// Close releases what the store holds.
	Close() error
}

// QuickTaker is a Store that can serve a take from what it last read, with
// no lock and nothing written, for a claim that a QuickClaimGate decides
// before its answer: the gate keeps two claimers apart then, and is the
// record a kill -9 of the claimer leaves; the store's record follows the
// answer (PendingTake.Record).
type QuickTaker interface {
	// TakeQuick is Take served from memory. ok is false when it cannot be
	// (nothing read yet, another transaction of this process running,
	// expiring entries to drop at the head): the caller takes as usual.
	TakeQuick(r TakeRequest) (taken Entry, p PendingTake, ok bool)
}

// Withdrawer is a Store that can take back one claim's own take: the entry
// leaves the store if it is pooled or claimed by that claim (ClaimedBy and
// ClaimedAt), and stays if another claim's record holds it meanwhile.
type Withdrawer interface {
	Withdraw(ctx context.Context, e Entry) error
}

// PendingTake is a take served from memory whose record is not written yet.
type PendingTake interface {
	// Record writes it, with every other take pending; once written, a
	// Record does nothing.
	Record(ctx context.Context) error
	// RecordSoon has it written without waiting: by the next change of the
	// store, or within a few milliseconds by one of its own (one write for
	// every take of a burst), or at the store's Close. For a claim whose
	// answer went out while others come (a burst, claims back to back):
	// the gate holds the claim meanwhile, as it does until Record.
	RecordSoon()
	// Cancel withdraws it, the gate having refused the claim: nothing of it
	// is written from now on, and its entry is as the store last read it.
	// recorded says a transaction of this process wrote it meanwhile.
	Cancel() (recorded bool)
}

// TakeRequest is one claim asked of a Store.
type TakeRequest struct {
	// MinExpiresAt: an entry expiring before it is too short to hand out.
	MinExpiresAt time.Time
	// ClaimedBy says who claims; it must not be empty.
	ClaimedBy string
	// Now is recorded as the entry's ClaimedAt.
	Now time.Time
	// KeepShort leaves short entries pooled instead of dropping them: only
	// the controller (the lease holder) terminates pooled sandboxes for
	// being too short; a claimer in another process skips them, since its
	// idea of "too short" may not be the pool's.
	KeepShort bool
}

// Lease is held by the one controller that maintains a pool (SPEC Behaviour 6).
type Lease interface {
	// Release gives the lease up.
	Release() error
}

// Leaser is implemented by stores that can elect one controller per pool.
type Leaser interface {
	// AcquireLease takes the controller lease for holder, or fails with an
	// *LeaseHeldError naming who holds it.
	AcquireLease(ctx context.Context, holder LeaseRecord) (Lease, error)
	// LeaseHolder says who holds the lease now, the zero record when nobody does.
	LeaseHolder(ctx context.Context) (LeaseRecord, error)
}

// Role is what a process is to a pool.
type Role string

const (
	// RoleNone: no loop runs in this process (a one-shot command).
	RoleNone Role = ""
	// RoleController holds the lease and maintains the pool.
	RoleController Role = "controller"
	// RoleViewer watches a pool that another process maintains.
	RoleViewer Role = "viewer"
	// RoleBackfill holds the lease for a moment to refill the pool after a
	// claim when no controller runs; a controller starting meanwhile waits.
	RoleBackfill Role = "backfill"
)

// LeaseRecord says who holds a pool's controller lease, as stored with it.
type LeaseRecord struct {
	Host string `json:"host,omitempty"`
	Pid  int    `json:"pid,omitempty"`
	// Role is RoleController or RoleBackfill.
	Role Role `json:"role,omitempty"`
	// Command is the holder's command line, secrets left out
	// ("sandboxpool run --size 5 --token ***").
	Command string `json:"command,omitempty"`
	// API is the address the holder serves the HTTP API on ("" when none).
	API   string    `json:"api,omitempty"`
	Since time.Time `json:"since,omitzero"`
	// Node is the holder's machine boot and pid namespace (NodeID): its
	// Pid names a process here only when Node is this process's. A host
	// name alone can be shared (VMs from one image, containers).
	Node string `json:"node,omitempty"`
}

// IsZero reports an empty record: nobody holds the lease.
func (r LeaseRecord) IsZero() bool {
	return r.Host == "" && r.Pid == 0 && r.Role == "" && r.Command == "" && r.API == "" && r.Since.IsZero() && r.Node == ""
}

// Same reports whether two records name the same holder (Since compared as an instant).
func (r LeaseRecord) Same(o LeaseRecord) bool {
	return r.Host == o.Host && r.Pid == o.Pid && r.Role == o.Role && r.Command == o.Command &&
		r.API == o.API && r.Since.Equal(o.Since) && r.Node == o.Node
}

// String names the holder in one line:
// "pid 42 on build-1 (api 127.0.0.1:7780): sandboxpool run --size 5".
func (r LeaseRecord) String() string {
	if r.IsZero() {
		return ""
	}
	s := ""
	if r.Pid != 0 {
		s += "pid " + strconv.Itoa(r.Pid) + " on "
	}
	s += r.Host
	switch {
	case r.Role == RoleBackfill:
		s += " (a claim's backfill)"
	case r.API != "":
		s += " (api " + r.API + ")"
	}
	if r.Command != "" {
		s += ": " + r.Command
	}
	return strings.TrimSpace(strings.ReplaceAll(s, "\n", " "))
}

// LeaseHeldError says that another controller maintains the pool.
type LeaseHeldError struct{ Holder LeaseRecord }

func (e *LeaseHeldError) Error() string {
	return "pool is maintained by another controller: " + e.Holder.String()
}

// ErrNotPooled is returned by Store.Put for a sandbox the store will not
// pool again: it was removed or dropped (its terminator may have died first).
var ErrNotPooled = errors.New("removed from the pool before: not pooled again")

// ErrNoSandbox is returned by a claim that found no good sandbox in time.
var ErrNoSandbox = errors.New("no good sandbox available")

// Health is the result of one health check.
type Health struct {
	OK        bool          `json:"ok"`
	Status    int           `json:"status"`
	Latency   time.Duration `json:"-"`
	CheckedAt time.Time     `json:"checked_at,omitzero"`
	Error     string        `json:"error"`
}

// Checked reports whether the sandbox was checked at all.
func (h Health) Checked() bool { return !h.CheckedAt.IsZero() }

// Sandbox is one row of a snapshot: what the controller knows of a sandbox now.
type Sandbox struct {
	ID        string
	URL       string
	State     State
	CreatedAt time.Time
	ExpiresAt time.Time
	Health    Health
	ClaimedBy string
	ClaimedAt time.Time
	// Err says why a sandbox failed or is unhealthy.
	Err string
}

// TimeLeft is the time until the sandbox expires, never negative.
func (s Sandbox) TimeLeft(now time.Time) time.Duration {
	if d := s.ExpiresAt.Sub(now); d > 0 {
		return d
	}
	return 0
}

// Snapshot is the pool as the controller sees it at one instant.
type Snapshot struct {
	Pool    string
	Backend string
	Target  int
	Now     time.Time
	// Sandboxes in pool order: pooled and claimed as the store holds them,
	// then those being created or warmed, then recently failed or terminating.
	Sandboxes []Sandbox
	Counts    map[State]int
	// NextPass is when the maintenance loop runs next (zero when none runs here).
	NextPass time.Time
	// BackoffUntil is set while creations are backed off after failures.
	BackoffUntil time.Time
	// Role is RoleController when this process holds the lease, RoleViewer
	// when another does, RoleNone when no loop runs here.
	Role Role
	// LeaseHolder names the controller when this process is a viewer
	// (Lease.String()); Lease is the whole record, this process's own when
	// it is the controller.
	LeaseHolder string
	Lease       LeaseRecord
	// LastError is the last backend or store error, cleared by a success.
	LastError string
	// Stats is the pool's claim and waste accounting.
	Stats Stats
	// Autosize says whether and why the target follows demand; Cost is
	// what the pool costs (pool/autosize.go, pool/cost.go).
	Autosize AutosizeStatus
	Cost     Cost
	// Rollout is the rolling replacement of a workload the pool no longer
	// runs, as the last pass saw it; zero when none is under way.
	Rollout RolloutStatus
}

// RolloutStatus is a rolling replacement under way (Controller's passes).
type RolloutStatus struct {
	From      string // the old workload, described
	Old       int    // good pooled sandboxes that still run it
	Replacing int    // of them, those whose replacement is being made
}

// Stats accounts for claims and the cost of keeping sandboxes warm.
type Stats struct {
	ClaimsWarm   int64 // served at once from a ready sandbox
	ClaimsWaited int64 // had to wait for a creation
	ClaimsFailed int64 // no sandbox within the timeout
	// WasteSeconds is sandbox-seconds spent ready in the pool and never claimed.
	WasteSeconds float64
}

// WarmHitRatio is the share of successful claims served warm (0 when none).
func (s Stats) WarmHitRatio() float64 {
	total := s.ClaimsWarm + s.ClaimsWaited
	if total == 0 {
		return 0
	}
	return float64(s.ClaimsWarm) / float64(total)
}

// EventKind names what happened.
type EventKind string

const (
	EventCreating       EventKind = "creating"        // a creation started
	EventCreated        EventKind = "created"         // ready and pooled; Duration is create-to-ready
	EventCreateFailed   EventKind = "create_failed"   // one try failed; Err says why
	EventHealthFailed   EventKind = "health_failed"   // a health check failed
	EventExpired        EventKind = "expired"         // dropped for too little time left
	EventClaimed        EventKind = "claimed"         // By says who
	EventTerminated     EventKind = "terminated"      // Reason says why
	EventAdopted        EventKind = "adopted"         // a live sandbox the store had lost
	EventResized        EventKind = "resized"         // target changed
	EventBackoff        EventKind = "backoff"         // creations paused until Until
	EventError          EventKind = "error"           // a backend or store call failed
	EventClaimTimeout   EventKind = "claim_timeout"   // a claim found nothing in time
	EventMaintained     EventKind = "maintained"      // a pass ended
	EventStoreChanged   EventKind = "store_changed"   // another process changed the pool
	EventLeaseAcquired  EventKind = "lease_acquired"  // this process became the controller
	EventLeaseWait      EventKind = "lease_wait"      // a controller waits for a claim's backfill to hand the pool over
	EventHealthRecovery EventKind = "health_recovery" // an unhealthy sandbox answered again
	EventTiming         EventKind = "timing"          // this process judges by the pool's stored timing
	EventWorkload       EventKind = "workload"        // the pool's sandboxes run another workload from now on
	EventStoreLost      EventKind = "store_lost"      // the store lost what it held (moved away, deleted, an older copy put back)
	EventBackend        EventKind = "backend"         // news of the backend itself (the local agent died and a new one runs)
)

// Termination reasons, as counted by metrics.
const (
	ReasonExpired   = "expired"   // expiring, never claimed
	ReasonUnhealthy = "unhealthy" // failed a health check, or dead
	ReasonShrink    = "shrink"    // surplus over the target
	ReasonUser      = "user"      // asked for by a person or a client
	ReasonFailed    = "failed"    // never got healthy after creation
	ReasonCancelled = "cancelled" // its creation was cut short (the controller stopping, surplus)
	ReasonOrphan    = "orphan"    // running for this pool but unknown to the store
	ReasonCleanup   = "cleanup"   // --cleanup on quit
	ReasonReplaced  = "replaced"  // it ran the pool's old workload, and its replacement is ready
	// reasonClaimedElsewhere: pooled in the store, claimed in the backend's
	// record; it leaves the pool and is not terminated.
	reasonClaimedElsewhere = "claimed"
	// reasonStaleStore: pooled in a store gone back in time, claimed as
	// this process saw it; it leaves the pool and is not terminated.
	reasonStaleStore = "stale"
)

// Who asked for a termination (Event.By), besides a claimer's own name.
const (
	ByController = "controller" // the pool's own rules: expiry, health, surplus, orphans
	ByUser       = "user"       // a person or client, through Terminate or TerminateAll
	byClaim      = "claim for " // + the claimer: a claim met it (too short, failed the claim's probe)
)

// ClaimBy is who asked for a termination that a claim for claimer caused:
// the claim, not the claimer ("api 127.0.0.1:5555" asked for a sandbox, not
// for this one's end).
func ClaimBy(claimer string) string { return byClaim + claimer }

// byText is who asked for a termination, as a log line says it.
func byText(by string) string {
	switch {
	case by == ByController:
		return "the controller"
	case by == ByUser:
		return "a user"
	case strings.HasPrefix(by, byClaim):
		return "a " + by
	}
	return by
}

// Event is one thing that happened to the pool, for observers.
type Event struct {
	Time      time.Time
	Kind      EventKind
	SandboxID string
	// By is who claimed (dashboard, cli, api 127.0.0.1:5555), or who asked
	// for a termination (ByController, ByUser, ClaimBy(claimer) for one a
	// claim met, or the name given to TerminateAs).
	By string
	// Reason is why a sandbox was terminated.
	Reason string
	// Duration is create-to-ready for created, wait time for claimed.
	Duration time.Duration
	// Warm is true for a claim served without waiting for a creation.
	Warm bool
	// Health is set for health events.
	Health Health
	// Until is set for backoff.
	Until time.Time
	Err   string
	// ErrorKind says what failed, for an error event: ProblemStore,
	// ProblemBackend, ProblemBudget, ProblemLease (sandboxpool_errors_total{kind}).
	ErrorKind string
	// Count is how many identical errors this one stands for: identical
	// errors are folded, one event at the 1st, 10th, 100th... occurrence.
	Count int
	// Remote is set for a claim made by another process, seen in the store
	// (Duration is then unknown: 0) or heard of first through the journal.
	Remote bool
	// Tail is the workload's last lines of output, for a create_failed
	// whose workload exited (ExitWatcher backends).
	Tail string
	// Message is a one-line human description.
	Message string
}

// Routine says an event is too frequent to be worth a line of a log (a
// pass's end, a store poll that saw a change): what a table or a counter
// shows. A store change that names a sandbox is a decision (claimed
// elsewhere: not handed out again; ended already: out of the pool) and
// worth its line, or a sandbox leaves the pool without a word.
func (e Event) Routine() bool {
	switch e.Kind {
	case EventMaintained, EventCreating:
		return true
	case EventStoreChanged:
		return e.SandboxID == ""
	}
	return false
}

// Optional backend capabilities, found by type assertion. The engine uses
// them when a backend has them and works without them.

// ErrAlreadyClaimed is a ClaimGate's answer for a sandbox another claim holds.
var ErrAlreadyClaimed = errors.New("already claimed")

// ClaimGate is a ClaimRecorder whose record can refuse a claim: a store
// that lost a claim (moved away, an old copy put back) may hand its sandbox
// out again, and the backend's record is what says no. A claim on such a
// backend waits for its record before its answer.
type ClaimGate interface {
	// MarkClaimedOnce records e's claim (its ClaimedBy and ClaimedAt), or
	// returns ErrAlreadyClaimed when another claim holds the sandbox;
	// recording the same claim again is fine.
	MarkClaimedOnce(ctx context.Context, e Entry) error
}

// QuickClaimGate is a ClaimGate that can most often decide a claim without
// waiting on another process (the local agent's claim table in shared
// memory: one compare-and-swap instead of a round trip). A claim it lets
// through is answered at once; its record is made with the decision
// (recorded), or else by MarkClaimedOnce beside the answer, as a
// ClaimRecorder's.
type QuickClaimGate interface {
	ClaimGate
	// TryClaimOnce decides e's claim as MarkClaimedOnce would (nil,
	// ErrAlreadyClaimed, ErrNotFound) when it can at once; decided is false
	// when it cannot, and then MarkClaimedOnce decides. recorded says a
	// claim let through has its whole record (ClaimedBy, ClaimedAt)
	// already: no MarkClaimedOnce follows.
	TryClaimOnce(e Entry) (decided, recorded bool, err error)
}

// WorkloadBackend is a backend whose sandboxes run a workload chosen by
// flags (a command, an image, a port). The pool stores it with its
// settings (Store.SetWorkload), so that a process that takes the pool over
// or backfills it creates the sandboxes its controller was asked for, not
// those of its own flags.
type WorkloadBackend interface {
	// Workload says what Create starts now, as a store keeps it: a string
	// only this backend reads, equal for equal workloads.
	Workload() string
	// UseWorkload makes Create start w from now on; an error says w cannot
	// be read (written by a newer build), and nothing changed.
	UseWorkload(w string) error
	// DescribeWorkload says w in a few words for people, as the flags
	// that ask for it: --cmd "python3 -m http.server {port}".
	DescribeWorkload(w string) string
}

// WorkloadKeyer is a WorkloadBackend whose List says what a sandbox runs
// (Ref.Workload) by a key of the workload, not the workload itself (Modal
// tags are short).
type WorkloadKeyer interface {
	WorkloadKey(w string) string
}

// BackendNotifier is a backend with news of its own worth a line of the
// pool's log (EventBackend): its local agent died, and a new one runs.
type BackendNotifier interface {
	// NotifyTo makes the backend call fn with each such news, outside its
	// locks; fn must be quick.
	NotifyTo(fn func(message string))
}

// LossWatcher is a backend that learns at once when every sandbox it ran
// ended together (the local agent died: its sandboxes died with it), which
// the pool would otherwise learn from probes and, for claimed ones, from a
// sweep minutes later.
type LossWatcher interface {
	// WatchLoss calls lost with each such loss until ctx ends.
	WatchLoss(ctx context.Context, lost func(BackendLoss))
}

// BackendLoss is every sandbox of the backend created before Before ended,
// for the reason Why ("the local agent of pool "x" died (killed or
// crashed)").
type BackendLoss struct {
	Why    string
	Before time.Time
}

// PooledTerminator is a backend that can terminate a sandbox only if no
// claim holds it (by its own record of claims): what the pool terminates
// for its own reasons (surplus, expiring, unhealthy) a stale store may have
// listed as pooled after it was claimed.
type PooledTerminator interface {
	// TerminatePooled is Terminate, or ErrAlreadyClaimed, leaving it
	// running, or ErrNotFound when it had ended already.
	TerminatePooled(ctx context.Context, id string) error
}

// ClaimRecorder is a backend that keeps its own record of which sandboxes are
// claimed (the local agent's state, Modal tags), so losing or replacing the
// store never puts a claimed sandbox back in the pool. List then reports
// claimed sandboxes with Ref.Claimed set.
type ClaimRecorder interface {
	MarkClaimed(ctx context.Context, id, by string) error
}

// ChangeLister is a backend that can list, instead of every sandbox, the
// unclaimed ones and what changed among the claimed ones since a cursor
// (the local agent): a pass then costs the same with 10 or 10,000 claimed
// sandboxes running. The engine still lists in full now and then.
type ChangeLister interface {
	ListChanges(ctx context.Context, since ListCursor) (Listing, error)
}

// ListCursor is where a ChangeLister's last listing ended; the zero cursor
// asks for the full list.
type ListCursor struct {
	Epoch int64  // which incarnation of the backend answered (the agent's start)
	Seq   uint64 // its count of claimed sandboxes' changes
}

// Listing is a ChangeLister's answer.
type Listing struct {
	// Full says Refs is every live sandbox, as List returns them (the
	// cursor could not be answered). Otherwise Refs are the unclaimed
	// live sandboxes and those claimed since the cursor (Ref.Claimed set),
	// and Ended the claimed ones that ended since it.
	Full  bool
	Refs  []Ref
	Ended []string
	Next  ListCursor
}

// SelfContained is a backend whose sandboxes do not end on their own
// between probes: they are served by the backend's own process (the local
// agent's built-in workload) and end only with it, or when terminated. A
// claim that trusts a fresh probe then does not wait for the claim record's
// "not running" answer: the record is made beside the claim's answer.
type SelfContained interface {
	SandboxesEndOnlyWithBackend() bool
}

// LogReader reads a sandbox's workload output (the dashboard's log view).
type LogReader interface {
	// ReadLog returns up to max bytes of the log from offset and the offset
	// just after them; offset < 0 means the last max bytes.
	ReadLog(ctx context.Context, id string, offset int64, max int) (data []byte, next int64, err error)
}

// ExitWatcher is a backend that knows when a workload exited, so a creation
// fails at once (with the workload's last lines) instead of waiting out the
// health timeout.
type ExitWatcher interface {
	// Exited reports whether the sandbox's workload has exited, and how.
	Exited(ctx context.Context, id string) (exited bool, info ExitInfo, err error)
}

// ExitInfo is how a workload ended.
type ExitInfo struct {
	Code int    // exit code, or -signal
	Tail string // its last lines of output
	// Unknown: the backend no longer knows the sandbox (it died with its
	// local agent), so Code says nothing.
	Unknown bool
}

// ExitText says how a workload ended: "exit code 3", "signal 9 (killed)".
func ExitText(code int) string {
	if code < 0 {
		// Go names SIGKILL "killed": say "signal 9 (killed)", not "killed by killed".
		return fmt.Sprintf("signal %d (%s)", -code, syscall.Signal(-code))
	}
	return "exit code " + strconv.Itoa(code)
}

// Problem is something wrong with the pool now: shown by /healthz (503),
// GET /v1/pool's error, the dashboard and sandboxpool_errors_total{kind}.
type Problem struct {
	Kind    string // ProblemStore, ProblemBackend, ProblemBudget, ProblemBackoff, ProblemLease
	Message string
	Count   int // identical occurrences folded into this one
	Since   time.Time
}
