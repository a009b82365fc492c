package journal

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/sandboxpool/sandboxpool/pool"
)

// A journal line is what its encoder writes, whether appendJSON writes it
// or the encoder does (strings JSON escapes, odd times).
func TestJournalLinesAreWhatTheEncoderWrites(t *testing.T) {
	at := time.Date(2026, 12, 2, 13, 0, 0, 123456789, time.UTC)
	o := Origin{Host: "vm-1", Pid: 4242, ID: "0123abcd"}
	for _, e := range []pool.Event{
		{Time: at, Kind: pool.EventClaimed, SandboxID: "sb-1", By: "api 127.0.0.1:5555", Duration: 1234, Warm: true, Message: "sb-1 claimed by api 127.0.0.1:5555 (warm)"},
		{Time: at.Local(), Kind: pool.EventCreated, SandboxID: "sb-2", Duration: 45 * time.Millisecond,
			Health: pool.Health{OK: true, Status: 200, Latency: 300 * time.Microsecond, CheckedAt: at}},
		{Time: at, Kind: pool.EventHealthFailed, SandboxID: "sb-3", Health: pool.Health{Error: "refused", CheckedAt: at}, Err: "refused"},
		{Time: at, Kind: pool.EventBackoff, Until: at.Add(time.Minute).In(time.FixedZone("x", 3600)), Message: "back off"},
		{Time: at, Kind: pool.EventTerminated, SandboxID: "sb-4", Reason: "expired", By: "controller", Message: `a "quoted" <html> & naïve`},
		{Time: at.In(time.FixedZone("odd", 3600+7)), Kind: pool.EventClaimed},
		{Kind: pool.EventError, Err: "x\ny"},
	} {
		r := record{Origin: o, Event: toWire(e)}
		var want bytes.Buffer
		if err := json.NewEncoder(&want).Encode(r); err != nil {
			t.Fatal(err)
		}
		got, ok := r.appendJSON(nil)
		if !ok {
			got = want.Bytes() // the encoder's way
		}
		if string(got) != want.String() {
			t.Errorf("%+v:\n got %s\nwant %s", e, got, want.String())
		}
	}
	r := record{Origin: o, Event: toWire(pool.Event{Time: at, Kind: pool.EventClaimed, SandboxID: "sb-1", By: "cli"})}
	if _, ok := r.appendJSON(nil); !ok {
		t.Error("a claim's event does not take appendJSON's way")
	}
}
