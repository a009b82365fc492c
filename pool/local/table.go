package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
	"github.com/sandboxpool/sandboxpool/pool/local/claimtable"
	"golang.org/x/sys/unix"
)

// agentTable is one agent's claim table, mapped in this process. It is
// unmapped once unreachable: whoever uses it keeps it reachable meanwhile.
type agentTable struct {
	t     *claimtable.Table
	notes *claimtable.Notes // nil: the agent has none (an older one)
	pidfd int               // the agent's
	pid   int
}

// alive says the table's agent still runs. A dead agent's table says
// nothing true any more: its sandboxes died with it, and the next agent's
// are not in it.
func (t *agentTable) alive() bool {
	fds := []unix.PollFd{{Fd: int32(t.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0) // readable once the process exited
	return err == nil && n == 0
}

// tableRetry is how long an agent without a claim table (an older one) is
// not asked again.
const tableRetry = 10 * time.Second

// TryClaimOnce implements pool.QuickClaimGate: the claim is one CAS in the
// agent's claim table, and its record (who, when) a note beside it, with
// no request. It is undecided (the agent decides, MarkClaimedOnce) while
// no table is mapped, when its agent died, or when the table has no slot
// for the sandbox; its record is left to a request (recorded false) when
// the agent has no notes or the claimer's name does not fit in one.
func (b *Backend) TryClaimOnce(e pool.Entry) (decided, recorded bool, err error) {
	t := b.table.Load()
	key, ok := idKey(e.ID)
	if t == nil || !ok || !t.alive() {
		return false, false, nil
	}
	defer runtime.KeepAlive(t) // mapped until t is unreachable
	s := t.t.Find(key)
	if !s.Valid() {
		return false, false, nil
	}
	by := orDefault(e.ClaimedBy, "someone")
	switch r, _ := t.t.ClaimSlot(s, claimtable.Tag(by, e.ClaimedAt)); r {
	case claimtable.Won, claimtable.Held:
		// Held: this claim's own note may be missing (its first writer
		// died before it): the same note again.
		return true, t.notes != nil && t.notes.Write(s, by, e.ClaimedAt), nil
	case claimtable.Taken:
		return true, false, fmt.Errorf("local backend: %w: sandbox %s is held by another claim", pool.ErrAlreadyClaimed, e.ID)
	default: // Gone
		return true, false, fmt.Errorf("local backend: %w: sandbox %s is not running", pool.ErrNotFound, e.ID)
	}
}

// mapTable maps the agent's claim table, unless the one mapped is its
// agent's and alive. It runs after a list, off the claim path; when it
// fails, claims stay requests.
func (b *Backend) mapTable(ctx context.Context) {
	if t := b.table.Load(); t != nil && t.alive() {
		return
	}
	if !b.tableMu.TryLock() {
		return // being mapped
	}
	defer b.tableMu.Unlock()
	if time.Now().Before(b.tableNext) {
		return
	}
	t, err := b.openTable(ctx)
	b.table.Store(t) // nil when it failed: a dead agent's table goes too
	if err != nil {
		b.tableNext = time.Now().Add(tableRetry)
	}
}

// tableMapping is what unmapping an agentTable takes.
type tableMapping struct {
	t     *claimtable.Table
	notes *claimtable.Notes
	pidfd int
}

// openTable asks the agent for its claim table, on a connection of its
// own: the files come with the answer, which a buffered read would lose.
func (b *Backend) openTable(ctx context.Context) (*agentTable, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", b.paths.sock)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(5 * time.Second)
	}
	_ = uc.SetDeadline(dl)
	if _, err := uc.Write([]byte(`{"op":"` + opClaimTable + `","notes":true}` + "\n")); err != nil {
		return nil, err
	}
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(3*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if got, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	var resp response
	line, _, complete := bytes.Cut(buf[:n], []byte("\n"))
	if !complete {
		closeAll()
		return nil, errors.New("claim table: the answer was cut short")
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		closeAll()
		return nil, fmt.Errorf("claim table: bad answer from the local agent: %w", err)
	}
	if resp.Error != "" || len(fds) != 2 && len(fds) != 3 {
		closeAll()
		return nil, fmt.Errorf("claim table: the local agent gave %d files (%s)", len(fds), resp.Error)
	}
	f := os.NewFile(uintptr(fds[0]), "claim table")
	tab, err := claimtable.Open(f)
	f.Close() // the mapping stays
	if err != nil {
		unix.Close(fds[1])
		if len(fds) == 3 {
			unix.Close(fds[2])
		}
		return nil, err
	}
	var notes *claimtable.Notes
	if len(fds) == 3 {
		nf := os.NewFile(uintptr(fds[2]), "claim notes")
		notes, _ = claimtable.OpenNotes(nf, tab.Slots()) // none: records are requests
		nf.Close()
	}
	if b.opts.Prefault {
		// Once per agent, after a creation or a list: ~1 ms, off any claim.
		_ = tab.Prefault()
		if notes != nil {
			_ = notes.Prefault()
		}
	}
	t := &agentTable{t: tab, notes: notes, pidfd: fds[1], pid: resp.Pid}
	runtime.AddCleanup(t, func(m tableMapping) {
		m.t.Close()
		if m.notes != nil {
			m.notes.Close()
		}
		unix.Close(m.pidfd)
	}, tableMapping{tab, notes, fds[1]})
	if !t.alive() {
		return nil, errors.New("claim table: its agent exited")
	}
	return t, nil
}
