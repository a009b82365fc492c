package ui

import (
	"slices"
	"strings"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// history is each sandbox's timeline, as this dashboard saw it: state
// changes from snapshots (creating, warming, ready, expiring…) and the
// engine's events (created in, health changes, claimed by, terminated why
// and by whom), with times. Capped per sandbox and forgotten for sandboxes
// long gone.
type history struct {
	marks map[string][]mark
	last  map[string]pool.State // state in the last snapshot
}

// mark is one line of a timeline.
type mark struct {
	at   time.Time
	what string
	bad  bool // an error, a failed health check
	from string
}

const marksKeep = 40

func newHistory() history {
	return history{marks: map[string][]mark{}, last: map[string]pool.State{}}
}

func (h *history) add(id string, mk mark) {
	if id == "" {
		return
	}
	ms := h.marks[id]
	if n := len(ms); n > 0 && ms[n-1].what == mk.what && ms[n-1].at.Equal(mk.at) {
		return
	}
	ms = append(ms, mk)
	if len(ms) > marksKeep {
		ms = append(ms[:0:0], ms[len(ms)-marksKeep:]...)
	}
	h.marks[id] = ms
}

func (h *history) has(id, what string) bool {
	for _, mk := range h.marks[id] {
		if strings.HasPrefix(mk.what, what) {
			return true
		}
	}
	return false
}

// observe notes the states of a snapshot: a sandbox seen for the first
// time gets its creation time; each state change gets a line.
func (h *history) observe(sbs []pool.Sandbox, now time.Time) {
	for i := range sbs {
		sb := &sbs[i]
		prev, seen := h.last[sb.ID]
		if !seen && !sb.CreatedAt.IsZero() && !h.has(sb.ID, "created") {
			what := "created"
			if sb.State != pool.StateCreating {
				what = "created (before this dashboard watched)"
			}
			h.add(sb.ID, mark{at: sb.CreatedAt, what: what})
		}
		if prev == sb.State {
			continue
		}
		h.last[sb.ID] = sb.State
		if !seen && sb.State == pool.StateReady {
			continue // ready since before we watched: "created" says enough
		}
		switch sb.State {
		case pool.StateCreating:
			continue // "created" said it
		case pool.StateReady:
			if h.has(sb.ID, "ready") || prev == pool.StateUnhealthy {
				continue // the created event said it, or "answers again" will
			}
		case pool.StateClaimed, pool.StateUnhealthy:
			continue // the event says by whom, or why
		}
		h.add(sb.ID, mark{at: now, what: string(sb.State), bad: sb.State == pool.StateFailed})
	}
	if len(h.last) > 2*len(sbs)+64 {
		live := make(map[string]bool, len(sbs))
		for i := range sbs {
			live[sbs[i].ID] = true
		}
		for id := range h.last {
			if !live[id] {
				delete(h.last, id)
				delete(h.marks, id)
			}
		}
	}
}

// event notes what the engine said about a sandbox. by names who asked
// for it when this dashboard knows ("this dashboard").
func (h *history) event(e pool.Event, by string) {
	from := origin(e)
	if by != "" && from == "" {
		from = by
	}
	at := e.Time
	switch e.Kind {
	case pool.EventCreated:
		if e.Duration > 0 && !h.has(e.SandboxID, "created") {
			h.add(e.SandboxID, mark{at: e.Time.Add(-e.Duration), what: "created"})
		}
		h.add(e.SandboxID, mark{at: at, what: "ready", from: from})
		if e.Duration > 0 {
			ms := h.marks[e.SandboxID]
			ms[len(ms)-1].what = "ready (created in " + roundTook(e.Duration) + ")"
		}
	case pool.EventHealthFailed:
		h.add(e.SandboxID, mark{at: at, what: "health failed: " + oneLine(orDash(e.Err)), bad: true, from: from})
	case pool.EventHealthRecovery:
		h.add(e.SandboxID, mark{at: at, what: "answers again (" + healthText(e.Health) + ")", from: from})
	case pool.EventClaimed:
		how := "warm"
		if !e.Warm {
			how = "after " + roundTook(e.Duration)
		}
		h.add(e.SandboxID, mark{at: at, what: "claimed by " + orDash(e.By) + " (" + how + ")", from: from})
	case pool.EventTerminated:
		h.add(e.SandboxID, mark{at: at, what: "terminated (" + orDash(e.Reason) + ")", bad: e.Reason != pool.ReasonUser, from: from})
	case pool.EventExpired:
		h.add(e.SandboxID, mark{at: at, what: "expired: too little time left", from: from})
	case pool.EventAdopted:
		h.add(e.SandboxID, mark{at: at, what: "adopted (running, unknown to the store)", from: from})
	case pool.EventCreateFailed:
		h.add(e.SandboxID, mark{at: at, what: "creation failed: " + oneLine(e.Err), bad: true, from: from})
	case pool.EventError:
		h.add(e.SandboxID, mark{at: at, what: "error: " + oneLine(e.Err), bad: true, from: from})
	}
}

// timeline returns id's marks, oldest first.
func (h *history) timeline(id string) []mark {
	ms := slices.Clone(h.marks[id])
	slices.SortStableFunc(ms, func(a, b mark) int { return a.at.Compare(b.at) })
	return ms
}

// origin is the process a journal-replayed event came from ("pid 4242"),
// which the journal appends to its message; "" for this process's own.
func origin(e pool.Event) string {
	if i := strings.LastIndex(e.Message, " · pid "); i >= 0 {
		return e.Message[i+len(" · "):]
	}
	return ""
}

func roundTook(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(time.Millisecond).String()
	}
	return d.String()
}
