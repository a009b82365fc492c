package local

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/local/claimtable"
	"golang.org/x/sys/unix"
	"gopkg.in/natefinch/lumberjack.v2"
)

// agentSpec is what the agent is started with (envAgent, JSON).
type agentSpec struct {
	Exe      string        `json:"exe"`
	StateDir string        `json:"state_dir"`
	Pool     string        `json:"pool"`
	Idle     time.Duration `json:"idle"`
	LogTotal int64         `json:"log_total"`
	// Slack is the timer slack of the process that started the agent, in
	// ns: its --cmd workloads get it (the agent runs with agentTimerSlack).
	Slack int64 `json:"slack,omitempty"`
}

// paths are a pool's files in the state dir.
type paths struct {
	sock, lock, start, log, boxes string
	// clean exists while no agent runs and the last one stopped every
	// sandbox it had: nothing of the pool can be left to sweep.
	clean string
}

func poolPaths(stateDir, pool string) paths {
	p := filepath.Join(stateDir, pool)
	return paths{sock: p + ".agent.sock", lock: p + ".agent.lock", start: p + ".agent.start", log: p + ".agent.log", boxes: p + ".sandboxes", clean: p + ".agent.clean"}
}

// agent runs one pool's sandboxes. It answers one JSON request per line on
// a unix socket, only to processes of its own uid.
type agent struct {
	spec  agentSpec
	paths paths
	mark  string // envAgentMark=<socket>: on every process of every sandbox of this agent
	uid   uint32
	ln    *net.UnixListener
	// lock is held for the agent's life: one agent per pool. Kept here so
	// that it stays reachable: an *os.File no longer referenced is closed
	// by its finalizer at a GC, and its flock released with it (it was:
	// a second agent could then start, and a controller take the live
	// one for dead and kill its sandboxes).
	lock *os.File
	// afterCrash: the agent before this one died without stopping (set
	// before serving, never changed).
	afterCrash bool

	logBytes atomic.Int64 // on disk, every sandbox log of the pool
	logFds   *fdCache     // the few log files kept open
	spawnc   chan spawnReq

	mu       sync.Mutex
	boxes    map[string]*sandbox
	byPid    map[int]*sandbox // --cmd workloads not reaped yet
	conns    int
	lastCall time.Time
	keptFor  time.Time // the lastCall of the quiet spell said kept alive by sandboxes
	// Ids terminated before they were created (a Create given up on, whose
	// request is still on its way): never created after.
	tombs   map[string]time.Time
	closing bool
	changes claimChanges

	// The claim table (nil if it could not be made: every claim is then a
	// request) and what a caller gets to map it: its file, and a pidfd of
	// this agent, which tells a caller that the table died with it.
	table     *claimtable.Table
	tableFile *os.File
	pidfd     *os.File
	// Who made each claim in the table and when, noted by its claimer
	// (nil if they could not be made: claimers then send the record).
	notes     *claimtable.Notes
	notesFile *os.File

	// served counts the requests answered, by op (the known ones): a ping
	// with Served says them, so that a test or a tool can tell how often a
	// pool's processes ask the agent. Read-only map.
	served map[string]*atomic.Uint64
}

// agentOps are the ops served counts.
var agentOps = []string{"ping", "create", opCreateBatch, "list", "terminate", "claimed", "exited", "log", "kill", "shutdown", opClaimTable}

// claimChanges lets a caller list only the unclaimed sandboxes and what
// changed among the claimed ones since its last list (list with Since):
// a maintenance pass then costs the same with 10 or 10,000 claimed
// sandboxes running (issue 9). Guarded by agent.mu.
type claimChanges struct {
	epoch int64  // this agent's start: a cursor of another agent means nothing here
	seq   uint64 // counts claims and ends of claimed sandboxes
	// ended lists claimed sandboxes that stopped being listed, in seq
	// order, the oldest dropped past maxEnded; floor is the newest seq
	// dropped: a cursor older than it gets the full list.
	ended []endNote
	floor uint64
}

type endNote struct {
	seq uint64
	id  string
}

// agentLogMaxMB caps the agent's own log (<pool>.agent.log) before it is
// rotated; one older part is kept.
const agentLogMaxMB = 10

// maxEnded bounds what the agent remembers of ended claimed sandboxes for
// callers that list changes: one that falls further behind lists in full.
const maxEnded = 1 << 16

// endedLocked notes that sb stopped being listed: its slot says ended (no
// claim of it after), and a claimed sandbox's end is news to a caller
// listing changes.
func (a *agent) endedLocked(sb *sandbox) {
	if sb.slot.Valid() {
		if was, tag := a.table.End(sb.slot); was == claimtable.Claimed {
			a.claimedLocked(sb, tag)
		}
	}
	if sb.claimTag == 0 || sb.endNoted {
		return
	}
	sb.endNoted = true
	ch := &a.changes
	ch.seq++
	ch.ended = append(ch.ended, endNote{ch.seq, sb.id})
	if len(ch.ended) > maxEnded {
		drop := len(ch.ended) - maxEnded/2
		ch.floor = ch.ended[drop-1].seq
		ch.ended = slices.Delete(ch.ended, 0, drop)
	}
}

// sandbox is one sandbox as the agent runs it.
type sandbox struct {
	id        string
	url       string
	work      string // a --cmd workload's directory (the built-in one's is in memory)
	workload  string // what it runs, as the pool stores a workload
	createdAt time.Time
	expiresAt time.Time
	grace     time.Duration
	log       *logFile
	expiry    *time.Timer

	// Built-in workload.
	srv  *builtinServer
	raw  *os.File    // during warmup: the port's socket, bound, not listening
	warm *time.Timer // ends the warmup

	// --cmd workload.
	cmd    bool
	pid    int           // leads the sandbox's process group; 0 once reaped
	copied chan struct{} // closed when its output is drained into the log

	// Its slot in the claim table (none: a full bucket, or no table; its
	// claims are then requests only). Set at creation, under agent.mu.
	slot claimtable.Slot

	// Guarded by agent.mu.
	// claimTag is the claim holding it (claimtable.Tag of its by and at),
	// 0 for none. A claim made in the table is the agent's once it reads
	// the slot (observeLocked): claimedBy and claimedAt come from its
	// claimer's note (claimerLocked) or its record's request, and may be
	// missing.
	claimTag  uint64
	claimedBy string
	claimedAt time.Time     // the claim's instant, as its claimer recorded it
	claimSeq  uint64        // claimChanges.seq when it was claimed
	endNoted  bool          // its end is in claimChanges.ended
	ending    bool          // terminate or expiry under way: no longer listed
	exited    bool          // the workload ended (then code says how)
	code      int           // exit code, or -signal
	exitedCh  chan struct{} // closed when exited is set
	gone      chan struct{} // closed when forgotten
}

func (sb *sandbox) wire() wireRef {
	return wireRef{ID: sb.id, URL: sb.url, CreatedAt: sb.createdAt, ExpiresAt: sb.expiresAt, Claimed: sb.claimTag != 0, Workload: sb.workload}
}

// claimedLocked records that the claim of tag holds sb.
func (a *agent) claimedLocked(sb *sandbox, tag uint64) {
	if sb.claimTag != 0 {
		return
	}
	sb.claimTag = tag
	a.changes.seq++
	sb.claimSeq = a.changes.seq
}

// observeLocked takes a claim made in sb's slot into the agent's record:
// every decision that reads sb's claim reads the slot first.
func (a *agent) observeLocked(sb *sandbox) {
	if sb.claimTag == 0 && sb.slot.Valid() {
		if st, tag := a.table.Load(sb.slot); st == claimtable.Claimed {
			a.claimedLocked(sb, tag)
		}
	}
}

// claimerLocked names the claim holding sb in a message, from its
// claimer's note when no request said it.
func (a *agent) claimerLocked(sb *sandbox) string {
	if sb.claimedBy == "" && sb.claimTag != 0 && a.notes != nil {
		if by, at, ok := a.notes.Read(sb.slot, sb.claimTag); ok {
			sb.claimedBy, sb.claimedAt = by, at
		}
	}
	return orDefault(sb.claimedBy, "another claim")
}

// maxRequest bounds one request line.
const maxRequest = 4 << 20

// request and response are the agent's protocol: one JSON object per line.
type request struct {
	Op     string        `json:"op"`
	ID     string        `json:"id,omitempty"`
	TTL    time.Duration `json:"ttl,omitempty"`
	Cmd    string        `json:"cmd,omitempty"`
	Env    []string      `json:"env,omitempty"`
	Warmup time.Duration `json:"warmup,omitempty"`
	Grace  time.Duration `json:"grace,omitempty"`
	LogMax int64         `json:"log_max,omitempty"`
	By     string        `json:"by,omitempty"`
	// claimed: At is the claim's instant; with Once, a sandbox claimed by
	// another claim (another By or At) is refused (AlreadyClaimed).
	At     time.Time `json:"at,omitzero"`
	Once   bool      `json:"once,omitempty"`
	Offset int64     `json:"offset,omitempty"`
	Max    int       `json:"max,omitempty"`
	// List only unclaimed sandboxes and the changes among claimed ones
	// since this cursor (Epoch, Since); a cursor this agent cannot answer
	// (another agent's, or too old) gets the full list.
	Changes bool   `json:"changes,omitempty"`
	Epoch   int64  `json:"epoch,omitempty"`
	Since   uint64 `json:"since,omitempty"`
	// opCreateBatch: the creations.
	Batch []request `json:"batch,omitempty"`
	// opClaimTable: the notes too. ping: Served too.
	Notes  bool `json:"notes,omitempty"`
	Served bool `json:"served,omitempty"`
}

// opCreateBatch creates the sandboxes of request.Batch (each a "create"),
// answering each in response.Batch, in order.
const opCreateBatch = "create_batch"

// opClaimTable asks for the claim table: its memory file and a pidfd of
// the agent come with the answer (SCM_RIGHTS), which says the agent's Pid;
// with request.Notes, the file of the claims' notes third (none from an
// agent without notes, or older). An agent without a table (or older)
// answers an error and no files.
const opClaimTable = "claim_table"

type response struct {
	Error    string `json:"error,omitempty"`
	NotFound bool   `json:"not_found,omitempty"` // the error is: no such sandbox
	// AlreadyClaimed: the error is that another claim holds the sandbox.
	AlreadyClaimed bool      `json:"already_claimed,omitempty"`
	Pid            int       `json:"pid,omitempty"`
	Ref            wireRef   `json:"ref,omitzero"`
	Refs           []wireRef `json:"refs,omitempty"`
	Exited         bool      `json:"exited,omitempty"`
	Unknown        bool      `json:"unknown,omitempty"` // exited: the agent does not know the sandbox, nor how it ended
	Code           int       `json:"code,omitempty"`
	Tail           string    `json:"tail,omitempty"`
	Data           []byte    `json:"data,omitempty"`
	Next           int64     `json:"next,omitempty"`
	// A list of changes: Full says Refs is every live sandbox; otherwise
	// Refs are the unclaimed ones and those claimed since the cursor, and
	// Ended the claimed ones that ended since it. Epoch and Seq are the
	// cursor for the next list.
	Full  bool     `json:"full,omitempty"`
	Ended []string `json:"ended,omitempty"`
	Epoch int64    `json:"epoch,omitempty"`
	Seq   uint64   `json:"seq,omitempty"`
	// opCreateBatch: an answer per creation, in order.
	Batch []response `json:"batch,omitempty"`
	// ping with Served: the requests answered so far, by op.
	Served map[string]uint64 `json:"served,omitempty"`
	// Agent names the agent that answered (its start, as Epoch); AfterCrash
	// says the agent before it died without stopping (killed or crashed),
	// and the sandboxes it ran ended with it.
	Agent      int64 `json:"agent,omitempty"`
	AfterCrash bool  `json:"after_crash,omitempty"`
}

type wireRef struct {
	ID        string    `json:"id"`
	URL       string    `json:"url"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Claimed   bool      `json:"claimed,omitempty"`
	Workload  string    `json:"workload,omitempty"` // as workload.encode says it
}

// runAgent is the agent's main: it returns only on a failure before it is
// ready (reported on ready); after that it exits the process itself.
func runAgent(spec agentSpec, ready *os.File) error {
	// Everything the agent creates is the user's alone.
	syscall.Umask(0o077)
	// Orphans of a sandbox (setsid, double fork) become our children, so
	// that we reap them and they never outlive their sandbox under init.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become a child subreaper: %w", err)
	}
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds | log.LUTC)
	p := poolPaths(spec.StateDir, spec.Pool)
	// A line per sandbox's end: capped and rotated, as a node agent's log
	// is (the launcher's descriptor, the first lines' and a crash's, stays
	// on the file it opened).
	log.SetOutput(&lumberjack.Logger{Filename: p.log, MaxSize: agentLogMaxMB, MaxBackups: 1})
	a := &agent{
		spec: spec, paths: p, mark: envAgentMark + "=" + p.sock, uid: uint32(os.Getuid()),
		logFds: newFDCache(fdCacheSize()),
		spawnc: make(chan spawnReq), boxes: map[string]*sandbox{}, byPid: map[int]*sandbox{}, lastCall: time.Now(), tombs: map[string]time.Time{},
		changes: claimChanges{epoch: time.Now().UnixNano()},
		served:  map[string]*atomic.Uint64{},
	}
	for _, op := range agentOps {
		a.served[op] = new(atomic.Uint64)
	}
	if err := os.MkdirAll(spec.StateDir, 0o700); err != nil {
		return err
	}
	_, err := os.Stat(p.lock)
	first := os.IsNotExist(err) // no agent ever ran here: nothing to sweep
	lock, err := os.OpenFile(p.lock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	// Held for life: one agent per pool. An agent that is exiting still
	// holds it for a moment: wait for it.
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		if c, err := net.Dial("unix", p.sock); err == nil {
			// Another agent runs and answers: the caller's need is met.
			c.Close()
			fmt.Fprintf(ready, "ok exists\n")
			os.Exit(0)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("another local agent of pool %q holds %s and does not answer", spec.Pool, p.lock)
		}
		time.Sleep(5 * time.Millisecond)
	}
	a.lock = lock
	// An agent before this one that did not stop cleanly died (its
	// sandboxes with it), unless none ran; so did one a Backend swept for.
	note, err := os.ReadFile(p.clean)
	a.afterCrash = (err != nil && !first) || string(note) == sweptNote
	// Whatever a dead agent left is no sandbox of ours: its processes (the
	// ones that escaped Pdeathsig) and its files go.
	if os.Remove(p.clean) != nil && !first {
		killMarked(syscall.SIGKILL, a.mark) // a /proc scan: only after an agent died
	}
	_ = os.RemoveAll(p.boxes)
	if err := os.Mkdir(p.boxes, 0o700); err != nil {
		return err
	}
	_ = os.Remove(p.sock)
	a.ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: p.sock, Net: "unix"})
	if err != nil {
		return err
	}
	if err := os.Chmod(p.sock, 0o600); err != nil {
		return err
	}
	go a.spawner()
	// Heard from here on, before any workload starts: a SIGCHLD that came
	// before the reaper's goroutine asked for it was dropped, and a
	// workload that exited at once was never reaped nor seen exited.
	chld := make(chan os.Signal, 16)
	signal.Notify(chld, syscall.SIGCHLD)
	go a.reaper(chld)
	go a.idle()
	go func() {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		s := <-sigs
		log.Printf("got %s: stopping every sandbox", s)
		a.shutdown(time.Second)
	}()
	a.makeClaimTable()
	log.Printf("local agent of pool %q ready on %s", spec.Pool, p.sock)
	fmt.Fprintf(ready, "ok %d\n", os.Getpid())
	ready.Close()
	a.accept()
	return nil
}

// makeClaimTable makes the claim table; without one, every claim is a
// request, as with an older agent.
func (a *agent) makeClaimTable() {
	t, f, err := claimtable.Create(claimtable.DefaultSlots)
	if err != nil {
		log.Printf("no claim table (claims are requests): %v", err)
		return
	}
	fd, err := unix.PidfdOpen(os.Getpid(), 0) // close-on-exec
	if err != nil {
		t.Close()
		f.Close()
		log.Printf("no claim table (claims are requests): pidfd_open: %v", err)
		return
	}
	a.table, a.tableFile, a.pidfd = t, f, os.NewFile(uintptr(fd), "agent pidfd")
	n, nf, err := claimtable.CreateNotes(t.Slots())
	if err != nil {
		log.Printf("no claim notes (claimers send their records): %v", err)
		return
	}
	a.notes, a.notesFile = n, nf
}

// sendClaimTable answers opClaimTable.
func (a *agent) sendClaimTable(c *net.UnixConn, notes bool) error {
	if a.table == nil {
		return json.NewEncoder(c).Encode(response{Error: "this local agent has no claim table"})
	}
	data, err := json.Marshal(response{Pid: os.Getpid()})
	if err != nil {
		return err
	}
	fds := []int{int(a.tableFile.Fd()), int(a.pidfd.Fd())}
	if notes && a.notesFile != nil {
		fds = append(fds, int(a.notesFile.Fd()))
	}
	_, _, err = c.WriteMsgUnix(append(data, '\n'), unix.UnixRights(fds...), nil)
	return err
}

// flockWait takes a flock, waiting until deadline.
func flockWait(f *os.File, how int, deadline time.Time) error {
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil || !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (a *agent) accept() {
	for {
		c, err := a.ln.AcceptUnix()
		if err != nil {
			a.mu.Lock()
			closing := a.closing
			a.mu.Unlock()
			if closing {
				select {} // exit is under way
			}
			log.Printf("accept: %v", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		cred, ok := peerCred(c)
		if uid := cred.Uid; !ok || uid != a.uid {
			log.Printf("refused a connection from uid %d (ok %v): only uid %d is answered", uid, ok, a.uid)
			_ = json.NewEncoder(c).Encode(response{Error: "the local agent answers only its own user"})
			c.Close()
			continue
		}
		a.mu.Lock()
		if a.closing {
			a.mu.Unlock()
			c.Close()
			continue
		}
		a.conns++
		a.lastCall = time.Now()
		a.mu.Unlock()
		go a.serve(c, cred.Pid)
	}
}

// peerCred is the uid and pid of the process at the other end, from the kernel.
func peerCred(c *net.UnixConn) (unix.Ucred, bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return unix.Ucred{}, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return unix.Ucred{}, false
	}
	return *cred, true
}

// asker names the process that asked for something (pid and command line),
// for the agent's log of why each sandbox ended.
func asker(pid int32) string {
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(cmd) == 0 {
		return fmt.Sprintf("pid %d", pid)
	}
	line := strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))
	if len(line) > 120 {
		line = line[:120] + "..."
	}
	return fmt.Sprintf("pid %d (%s)", pid, line)
}

func (a *agent) serve(c *net.UnixConn, peer int32) {
	defer func() {
		c.Close()
		a.mu.Lock()
		a.conns--
		a.lastCall = time.Now()
		a.mu.Unlock()
	}()
	// Small requests are the rule; one with a --cmd's environment grows the
	// line as needed, up to maxRequest.
	// The bound is per request: a client keeps its connection for many.
	lr := &io.LimitedReader{R: c, N: maxRequest}
	r := bufio.NewReader(lr)
	enc := json.NewEncoder(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				_ = enc.Encode(response{Error: "request too large or cut short"})
			}
			return
		}
		lr.N = maxRequest - int64(r.Buffered()) // what was read ahead counts toward the next
		var req request
		var resp response
		if err := json.Unmarshal(line, &req); err != nil {
			resp.Error = "bad request: " + err.Error()
		} else if req.Op == opClaimTable {
			a.count(req.Op)
			if err := a.sendClaimTable(c, req.Notes); err != nil {
				return
			}
			continue
		} else {
			a.count(req.Op)
			resp = a.handle(req)
			a.logEnd(req, resp, peer)
		}
		resp.Agent, resp.AfterCrash = a.changes.epoch, a.afterCrash // set before serving, never changed
		if err := enc.Encode(resp); err != nil {
			return
		}
		if req.Op == "shutdown" && resp.Error == "" {
			a.exit()
		}
	}
}

// logEnd says in the agent's log who ended a sandbox and how: every
// sandbox's end is then explained by a line (this, its expiry's, its
// workload's exit).
func (a *agent) logEnd(req request, resp response, peer int32) {
	switch {
	case req.Op == "kill":
		log.Printf("sandbox %s: killed (SIGKILL, as a crash), asked by %s", req.ID, asker(peer))
	case req.Op == "terminate" && resp.Error != "":
		log.Printf("sandbox %s: left running, asked by %s: %s", req.ID, asker(peer), resp.Error)
	case req.Op == "terminate" && req.Once:
		log.Printf("sandbox %s: terminated for its pool (never claimed), asked by %s", req.ID, asker(peer))
	case req.Op == "terminate":
		log.Printf("sandbox %s: terminated, asked by %s", req.ID, asker(peer))
	}
}

// count counts a request of op in served.
func (a *agent) count(op string) {
	if n := a.served[op]; n != nil {
		n.Add(1)
	}
}

func (a *agent) handle(r request) response {
	switch r.Op {
	case "ping":
		resp := response{Pid: os.Getpid()}
		if r.Served {
			resp.Served = map[string]uint64{}
			for op, n := range a.served {
				resp.Served[op] = n.Load()
			}
		}
		return resp
	case "create":
		ref, err := a.create(r)
		if err != nil {
			return response{Error: err.Error()}
		}
		return response{Ref: ref}
	case opCreateBatch:
		out := make([]response, len(r.Batch))
		for i, c := range r.Batch {
			if c.Op != "create" {
				out[i] = response{Error: fmt.Sprintf("op %q in a batch of creations", c.Op)}
				continue
			}
			out[i] = a.handle(c)
		}
		return response{Batch: out}
	case "list":
		if r.Changes {
			return a.listChanges(r.Epoch, r.Since)
		}
		return response{Refs: a.list(nil)}
	case "terminate":
		if r.Once {
			// A pool's reason (surplus, expiring, unhealthy...): never a
			// sandbox a claim holds, whatever a stale store said.
			claimer, gone := a.terminatePooled(r.ID, r.Grace)
			switch {
			case claimer != "":
				return response{Error: fmt.Sprintf("sandbox %s is claimed by %s: left running", r.ID, claimer), AlreadyClaimed: true}
			case gone:
				// Ended already (its claimer's terminate, its workload's
				// exit): nothing for the pool to terminate, and it says so.
				return response{Error: fmt.Sprintf("sandbox %s is not running", r.ID), NotFound: true}
			}
			return response{}
		}
		a.terminate(r.ID, r.Grace)
		return response{}
	case "claimed":
		a.mu.Lock()
		defer a.mu.Unlock()
		sb := a.boxes[r.ID]
		if sb == nil || sb.ending || sb.exited {
			return response{Error: fmt.Sprintf("sandbox %s is not running", r.ID), NotFound: true}
		}
		by := orDefault(r.By, "someone")
		tag := claimtable.Tag(by, r.At)
		if sb.slot.Valid() {
			// The slot decides, as for a claim made in the table.
			res, held := a.table.ClaimSlot(sb.slot, tag)
			if res == claimtable.Gone {
				return response{Error: fmt.Sprintf("sandbox %s is not running", r.ID), NotFound: true}
			}
			a.claimedLocked(sb, held)
		} else {
			a.claimedLocked(sb, tag)
		}
		if sb.claimTag == tag {
			if sb.claimedBy == "" { // this claim's record, maybe after its gate in the table
				sb.claimedBy, sb.claimedAt = by, r.At
			}
			return response{}
		}
		if r.Once {
			// A store that lost this claim (moved away, an old copy put
			// back) handed the sandbox out again: this record says no.
			return response{Error: fmt.Sprintf("sandbox %s is already claimed by %s", r.ID, a.claimerLocked(sb)), AlreadyClaimed: true}
		}
		return response{}
	case "exited":
		a.mu.Lock()
		sb := a.boxes[r.ID]
		a.mu.Unlock()
		if sb == nil {
			return response{Exited: true, Unknown: true, Code: -1, Tail: "(the local agent does not know this sandbox: it is gone)"}
		}
		a.mu.Lock()
		exited, code := sb.exited, sb.code
		a.mu.Unlock()
		if !exited {
			return response{}
		}
		return response{Exited: true, Code: code, Tail: sb.log.Tail(20)}
	case "log":
		a.mu.Lock()
		sb := a.boxes[r.ID]
		a.mu.Unlock()
		if sb == nil {
			return response{Error: fmt.Sprintf("sandbox %s is not known to the local agent", r.ID), NotFound: true}
		}
		data, next, err := sb.log.ReadAt(r.Offset, min(r.Max, 1<<20))
		if err != nil {
			return response{Error: err.Error()}
		}
		return response{Data: data, Next: next}
	case "kill":
		a.kill(r.ID)
		return response{}
	case "shutdown":
		a.stopAll(r.Grace)
		return response{}
	}
	return response{Error: fmt.Sprintf("unknown op %q", r.Op)}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// list returns the live sandboxes that keep says to (all when nil), oldest
// first.
func (a *agent) list(keep func(*sandbox) bool) []wireRef {
	a.mu.Lock()
	refs := make([]wireRef, 0, len(a.boxes))
	for _, sb := range a.boxes {
		if sb.ending || sb.exited {
			continue
		}
		a.observeLocked(sb)
		if keep == nil || keep(sb) {
			refs = append(refs, sb.wire())
		}
	}
	a.mu.Unlock()
	slices.SortFunc(refs, func(x, y wireRef) int {
		if c := x.CreatedAt.Compare(y.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	return refs
}

// listChanges answers a list of changes since the cursor (epoch, since):
// the unclaimed sandboxes, those claimed since, and the claimed ones that
// ended since; the full list for a cursor it cannot answer.
func (a *agent) listChanges(epoch int64, since uint64) response {
	a.mu.Lock()
	ch := &a.changes
	resp := response{Epoch: ch.epoch, Seq: ch.seq}
	full := epoch != ch.epoch || since < ch.floor || since > ch.seq
	if !full {
		at, _ := slices.BinarySearchFunc(ch.ended, since+1, func(n endNote, seq uint64) int { return cmpUint(n.seq, seq) })
		for _, n := range ch.ended[at:] {
			resp.Ended = append(resp.Ended, n.id)
		}
	}
	a.mu.Unlock()
	if full {
		resp.Full, resp.Refs = true, a.list(nil)
		return resp
	}
	// Read under a.mu again by list: a claim in between has a seq past
	// resp.Seq and shows again in the next list, which is harmless.
	resp.Refs = a.list(func(sb *sandbox) bool { return sb.claimTag == 0 || sb.claimSeq > since })
	return resp
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (a *agent) create(r request) (wireRef, error) {
	if !validID(r.ID) {
		return wireRef{}, fmt.Errorf("bad sandbox id %q", r.ID)
	}
	if r.TTL <= 0 {
		return wireRef{}, fmt.Errorf("ttl %s must be positive", r.TTL)
	}
	now := time.Now().UTC().Round(0)
	sb := &sandbox{
		id: r.ID, createdAt: now, expiresAt: now.Add(r.TTL), workload: newWorkload(r.Cmd, r.Warmup).encode(),
		grace: r.Grace, exitedCh: make(chan struct{}), gone: make(chan struct{}),
		log: newLogFile(filepath.Join(a.paths.boxes, r.ID+".log"), cmpInt(r.LogMax, DefaultLogMax), &a.logBytes, a.spec.LogTotal, a.logFds),
	}
	if sb.grace <= 0 {
		sb.grace = time.Second
	}
	readme := fmt.Sprintf("sandboxpool local sandbox %s\npool: %s\ncreated: %s\nexpires: %s\n",
		sb.id, a.spec.Pool, sb.createdAt.Format(time.RFC3339), sb.expiresAt.Format(time.RFC3339))
	// A --cmd workload gets a directory of its own; the built-in one serves
	// the same listing from memory (no inode to make and remove per sandbox).
	if r.Cmd != "" {
		sb.work = filepath.Join(a.paths.boxes, r.ID)
		if err := os.Mkdir(sb.work, 0o700); err != nil {
			return wireRef{}, err
		}
		if err := os.WriteFile(filepath.Join(sb.work, "README.txt"), []byte(readme), 0o600); err != nil {
			sb.removeWork()
			return wireRef{}, err
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closing {
		sb.removeWork()
		return wireRef{}, errors.New("the local agent is stopping")
	}
	if a.boxes[sb.id] != nil {
		return wireRef{}, fmt.Errorf("sandbox %s exists", sb.id)
	}
	if _, ok := a.tombs[sb.id]; ok {
		sb.removeWork()
		return wireRef{}, fmt.Errorf("sandbox %s was terminated already", sb.id)
	}
	var err error
	if r.Cmd == "" {
		err = a.startBuiltin(sb, r.Warmup, readme)
	} else {
		// Under a.mu: the reaper must find the pid registered.
		err = a.startCmd(sb, r)
	}
	if err != nil {
		sb.log.RemoveFiles()
		sb.removeWork()
		return wireRef{}, err
	}
	a.boxes[sb.id] = sb
	if key, ok := idKey(sb.id); ok && a.table != nil {
		sb.slot = a.table.Place(key) // before the answer: its claims may come next
	}
	if sb.pid > 0 {
		a.byPid[sb.pid] = sb
	}
	sb.expiry = time.AfterFunc(time.Until(sb.expiresAt), func() {
		log.Printf("sandbox %s: expired (its end was %s)", sb.id, sb.expiresAt.UTC().Format(time.RFC3339Nano))
		a.terminate(sb.id, sb.grace)
	})
	a.lastCall = time.Now()
	return sb.wire(), nil
}

// removeWork removes a --cmd workload's directory.
func (sb *sandbox) removeWork() {
	if sb.work != "" {
		_ = os.RemoveAll(sb.work)
	}
}

func cmpInt(v, def int64) int64 {
	if v <= 0 {
		return def
	}
	return v
}

// startBuiltin serves the sandbox's listing from inside the agent: a
// sandbox costs a socket and a goroutine, not a process.
func (a *agent) startBuiltin(sb *sandbox, warmup time.Duration, readme string) error {
	sb.srv = &builtinServer{h: builtinHandler{readme: readme, at: sb.createdAt}, log: sb.log}
	if warmup <= 0 {
		// No TCP keep-alive on loopback (no peer can vanish unseen): four
		// setsockopt calls fewer per connection accepted.
		ln, err := listenLoopback(&net.ListenConfig{KeepAlive: -1})
		if err != nil {
			return err
		}
		sb.url = "http://" + ln.Addr().String()
		go sb.srv.serve(ln)
		fmt.Fprintf(sb.log, "sandboxpool: serving the built-in listing on %s\n", sb.url)
		return nil
	}
	// The port is reserved by a bound socket that listens only after the
	// warmup: until then connections are refused, as for a booting sandbox.
	f, port, err := bindLoopback()
	if err != nil {
		return err
	}
	sb.raw = f
	sb.url = "http://127.0.0.1:" + strconv.Itoa(port)
	sb.warm = time.AfterFunc(warmup, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if sb.raw == nil || sb.ending || sb.exited {
			return
		}
		f := sb.raw
		sb.raw = nil
		defer f.Close()
		if err := syscall.Listen(int(f.Fd()), syscall.SOMAXCONN); err != nil {
			fmt.Fprintf(sb.log, "sandboxpool: listen: %v\n", err)
			return
		}
		ln, err := net.FileListener(f)
		if err != nil {
			fmt.Fprintf(sb.log, "sandboxpool: listen: %v\n", err)
			return
		}
		go sb.srv.serve(ln)
		fmt.Fprintf(sb.log, "sandboxpool: serving the built-in listing on %s after a %s warmup\n", sb.url, warmup)
	})
	return nil
}

// stopBuiltin closes the server and its connections at once.
func (sb *sandbox) stopBuiltin() {
	if sb.warm != nil {
		sb.warm.Stop()
	}
	if sb.raw != nil {
		sb.raw.Close()
		sb.raw = nil
	}
	sb.srv.close()
}

// startCmd starts a --cmd workload: /bin/sh -c, a direct child of the agent
// in its own process group, its output piped into the capped log.
func (a *agent) startCmd(sb *sandbox, r request) error {
	port, err := cmdPort(cmdPorts) // the command binds it itself
	if err != nil {
		return err
	}
	sb.cmd = true
	sb.url = "http://127.0.0.1:" + strconv.Itoa(port)
	ps := strconv.Itoa(port)
	env := r.Env
	if len(env) == 0 {
		env = os.Environ()
	}
	env = slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		return k == "PORT" || k == envRole || k == envAgent || k == envSandbox || k == envAgentMark ||
			k == envCreatedAt || k == envExpiresAt
	})
	env = append(env, "PORT="+ps, envSandbox+"="+sb.id, a.mark,
		envCreatedAt+"="+sb.createdAt.Format(time.RFC3339Nano), envExpiresAt+"="+sb.expiresAt.Format(time.RFC3339Nano))
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		pr.Close()
		pw.Close()
		return err
	}
	argv := []string{"/bin/sh", "-c", strings.ReplaceAll(r.Cmd, "{port}", ps)}
	reply := make(chan spawnResult, 1)
	a.spawnc <- spawnReq{argv: argv, env: env, dir: sb.work, files: []*os.File{null, pw, pw}, reply: reply}
	res := <-reply
	pw.Close()
	null.Close()
	if res.err != nil {
		pr.Close()
		return fmt.Errorf("start %q: %w", argv[2], res.err)
	}
	sb.pid = res.pid
	sb.copied = make(chan struct{})
	go func() {
		defer close(sb.copied)
		defer pr.Close()
		copyPaced(sb.log, pr)
	}()
	return nil
}

// logRate is how fast the agent takes a workload's output. Past it the
// workload waits on its writes, as with a full pipe: a chatty workload
// (`yes`) slows down instead of costing the agent a core.
const logRate = 8 << 20 // bytes per second

// copyPaced copies r to w at logRate at most.
func copyPaced(w io.Writer, r io.Reader) {
	buf := make([]byte, 64<<10)
	window, taken := time.Now(), 0
	for {
		n, err := r.Read(buf)
		if n > 0 {
			_, _ = w.Write(buf[:n])
			if taken += n; taken >= logRate/10 {
				if d := 100*time.Millisecond - time.Since(window); d > 0 {
					time.Sleep(d)
				}
				window, taken = time.Now(), 0
			}
		}
		if err != nil {
			return
		}
	}
}

type spawnReq struct {
	argv, env []string
	dir       string
	files     []*os.File
	reply     chan spawnResult
}

type spawnResult struct {
	pid int
	err error
}

// spawner forks every --cmd workload from one locked OS thread that never
// exits: Pdeathsig fires when the forking thread dies, and we want it to
// fire only when the agent does.
func (a *agent) spawner() {
	runtime.LockOSThread()
	// A workload gets the timer slack of the user's processes, not the
	// agent's own coarser one (agentTimerSlack): set for the fork only,
	// as this thread may be the agent's main one.
	own, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	setSlack := a.spec.Slack > 0 && err == nil && int64(own) != a.spec.Slack
	for r := range a.spawnc {
		fds := make([]uintptr, len(r.files))
		for i, f := range r.files {
			fds[i] = f.Fd()
		}
		if setSlack {
			_ = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(a.spec.Slack), 0, 0, 0)
		}
		pid, err := syscall.ForkExec(r.argv[0], r.argv, &syscall.ProcAttr{
			Dir: r.dir, Env: r.env, Files: fds,
			Sys: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
		})
		if setSlack {
			_ = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(own), 0, 0, 0)
		}
		runtime.KeepAlive(r.files)
		r.reply <- spawnResult{pid, err}
	}
}

// reaper reaps every child: the workloads (their exit is the sandbox's
// end) and the orphans we inherit as a subreaper.
func (a *agent) reaper(sigs <-chan os.Signal) {
	for range sigs {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
			a.mu.Lock()
			sb := a.byPid[pid]
			delete(a.byPid, pid)
			if sb != nil {
				sb.pid = 0
			}
			a.mu.Unlock()
			if sb != nil {
				code := ws.ExitStatus()
				if ws.Signaled() {
					code = -int(ws.Signal())
				}
				go a.workloadExited(sb, pid, code)
			}
		}
	}
}

// workloadExited ends a --cmd sandbox whose process exited: what it left
// running is killed, its output drained, and the exit recorded (its log
// stays until the sandbox is forgotten).
func (a *agent) workloadExited(sb *sandbox, pgid, code int) {
	// The group id cannot be reused while members remain.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	killMarked(syscall.SIGKILL, envSandbox+"="+sb.id, a.mark)
	select {
	case <-sb.copied:
	case <-time.After(time.Second):
	}
	a.mu.Lock()
	ending := sb.ending
	if !sb.exited {
		sb.exited, sb.code = true, code
		close(sb.exitedCh)
	}
	a.endedLocked(sb)
	a.mu.Unlock()
	if !ending {
		fmt.Fprintf(sb.log, "sandboxpool: the workload exited (%s)\n", pool.ExitText(code))
		log.Printf("sandbox %s: the workload exited (%s)", sb.id, pool.ExitText(code))
	}
}

// kill makes a sandbox die abruptly, as a crash would: for tests and chaos.
func (a *agent) kill(id string) {
	a.mu.Lock()
	sb := a.boxes[id]
	if sb == nil || sb.exited {
		a.mu.Unlock()
		return
	}
	if sb.cmd {
		if sb.pid > 0 {
			_ = syscall.Kill(-sb.pid, syscall.SIGKILL)
		}
		a.mu.Unlock()
		killMarked(syscall.SIGKILL, envSandbox+"="+id, a.mark)
		return
	}
	sb.stopBuiltin()
	sb.exited, sb.code = true, -int(syscall.SIGKILL)
	close(sb.exitedCh)
	a.endedLocked(sb)
	a.mu.Unlock()
}

// terminate stops a sandbox (SIGTERM, then SIGKILL after the grace, to its
// group and to every process carrying its mark) and forgets it. A second
// call waits for the first.
func (a *agent) terminate(id string, grace time.Duration) {
	a.mu.Lock()
	a.terminateLocked(id, grace)
}

// terminatePooled is a pool's termination: it leaves a sandbox a claim
// holds running (claimer names the claim), and says whether it had ended
// (gone). Deciding is one CAS pooled -> ended in its slot, so a claim in
// the table and this termination never both win.
func (a *agent) terminatePooled(id string, grace time.Duration) (claimer string, gone bool) {
	a.mu.Lock()
	sb := a.boxes[id]
	if sb != nil {
		if sb.slot.Valid() && !sb.ending && !sb.exited {
			if was, tag := a.table.EndPooled(sb.slot); was == claimtable.Claimed {
				a.claimedLocked(sb, tag)
			}
		} else {
			a.observeLocked(sb)
		}
		if sb.claimTag != 0 {
			claimer = a.claimerLocked(sb)
			a.mu.Unlock()
			return claimer, false
		}
	}
	gone = sb == nil || sb.exited
	a.terminateLocked(id, grace)
	return "", gone
}

// terminateLocked is terminate, called with a.mu held; it unlocks it.
func (a *agent) terminateLocked(id string, grace time.Duration) {
	sb := a.boxes[id]
	if sb == nil {
		now := time.Now()
		for id, at := range a.tombs {
			if now.Sub(at) > time.Minute {
				delete(a.tombs, id)
			}
		}
		a.tombs[id] = now
		a.mu.Unlock()
		return
	}
	if sb.ending {
		a.mu.Unlock()
		<-sb.gone
		return
	}
	sb.ending = true
	a.endedLocked(sb)
	if grace <= 0 {
		grace = sb.grace
	}
	if !sb.cmd && !sb.exited {
		sb.stopBuiltin()
		sb.exited, sb.code = true, -int(syscall.SIGTERM)
		close(sb.exitedCh)
	}
	pid := sb.pid
	a.mu.Unlock()
	if sb.expiry != nil {
		sb.expiry.Stop()
	}
	if sb.cmd {
		a.stopCmd(sb, pid, grace)
	}
	sb.log.RemoveFiles()
	sb.removeWork()
	a.mu.Lock()
	delete(a.boxes, id)
	if sb.slot.Valid() {
		a.table.Free(sb.slot)
	}
	a.lastCall = time.Now()
	a.mu.Unlock()
	close(sb.gone)
}

func (a *agent) stopCmd(sb *sandbox, pid int, grace time.Duration) {
	marks := []string{envSandbox + "=" + sb.id, a.mark}
	signalAll := func(sig syscall.Signal) {
		if pid > 0 {
			_ = syscall.Kill(-pid, sig)
		}
		killMarked(sig, marks...)
	}
	signalAll(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-sb.exitedCh:
	case <-t.C:
		signalAll(syscall.SIGKILL)
		select {
		case <-sb.exitedCh:
		case <-time.After(5 * time.Second):
			log.Printf("sandbox %s: its process %d survived SIGKILL for 5s", sb.id, pid)
		}
	}
	// Escapees that ignored SIGTERM: until none carries the mark.
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		if killMarked(syscall.SIGKILL, marks...) == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopAll terminates every sandbox at once.
func (a *agent) stopAll(grace time.Duration) {
	a.mu.Lock()
	ids := make([]string, 0, len(a.boxes))
	for id := range a.boxes {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() { a.terminate(id, grace) })
	}
	wg.Wait()
}

func (a *agent) shutdown(grace time.Duration) {
	a.stopAll(grace)
	a.exit()
}

// exit stops answering and ends the process; the lock goes with it.
func (a *agent) exit() {
	a.mu.Lock()
	a.closing = true
	a.mu.Unlock()
	_ = a.ln.Close() // removes the socket
	// Anything created meanwhile (a create that raced the shutdown).
	a.stopAll(time.Second)
	if f, err := os.OpenFile(a.paths.clean, os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
		f.Close()
	}
	log.Printf("local agent of pool %q exits", a.spec.Pool)
	os.Exit(0)
}

// idle ends an agent that has no sandbox and no caller for spec.Idle.
func (a *agent) idle() {
	every := min(max(a.spec.Idle/4, 20*time.Millisecond), 5*time.Second)
	for range time.Tick(every) {
		a.mu.Lock()
		noCaller := a.conns == 0 && time.Since(a.lastCall) >= a.spec.Idle && !a.closing
		quiet := noCaller && len(a.boxes) == 0
		if quiet {
			a.closing = true
		}
		kept := 0
		if noCaller && !quiet && !a.keptFor.Equal(a.lastCall) {
			a.keptFor, kept = a.lastCall, len(a.boxes) // said once a quiet spell
		}
		a.mu.Unlock()
		if kept > 0 {
			log.Printf("no caller for %s: kept running for its %d sandboxes", a.spec.Idle, kept)
		}
		if quiet {
			log.Printf("no sandbox and no caller for %s", a.spec.Idle)
			a.exit()
		}
	}
}

// AgentRan reports whether an agent ever ran for pool in stateDir: its lock
// file stays after it exits. A pool whose store was lost may still have
// sandboxes there.
func AgentRan(stateDir, pool string) bool {
	_, err := os.Stat(poolPaths(stateDir, pool).lock)
	return err == nil
}
