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
	pidfd int // the agent's
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
// agent's claim table, with no request. It is undecided (the agent decides,
// MarkClaimedOnce) while no table is mapped, when its agent died, or when
// the table has no slot for the sandbox.
func (b *Backend) TryClaimOnce(e pool.Entry) (bool, error) {
	t := b.table.Load()
	key, ok := idKey(e.ID)
	if t == nil || !ok || !t.alive() {
		return false, nil
	}
	defer runtime.KeepAlive(t) // mapped until t is unreachable
	switch t.t.Claim(key, claimtable.Tag(orDefault(e.ClaimedBy, "someone"), e.ClaimedAt)) {
	case claimtable.Won, claimtable.Held:
		return true, nil
	case claimtable.Taken:
		return true, fmt.Errorf("local backend: %w: sandbox %s is held by another claim", pool.ErrAlreadyClaimed, e.ID)
	case claimtable.Gone:
		return true, fmt.Errorf("local backend: %w: sandbox %s is not running", pool.ErrNotFound, e.ID)
	}
	return false, nil
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
	if _, err := uc.Write([]byte(`{"op":"` + opClaimTable + `"}` + "\n")); err != nil {
		return nil, err
	}
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(2*4))
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
	if resp.Error != "" || len(fds) != 2 {
		closeAll()
		return nil, fmt.Errorf("claim table: the local agent gave %d files (%s)", len(fds), resp.Error)
	}
	f := os.NewFile(uintptr(fds[0]), "claim table")
	tab, err := claimtable.Open(f)
	f.Close() // the mapping stays
	if err != nil {
		unix.Close(fds[1])
		return nil, err
	}
	t := &agentTable{t: tab, pidfd: fds[1], pid: resp.Pid}
	runtime.AddCleanup(t, func(m tableMapping) {
		m.t.Close()
		unix.Close(m.pidfd)
	}, tableMapping{tab, fds[1]})
	if !t.alive() {
		return nil, errors.New("claim table: its agent exited")
	}
	return t, nil
}
