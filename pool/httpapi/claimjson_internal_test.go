package httpapi

import (
	"encoding/json"
	"testing"
	"time"
)

// A claim's answer is what json.Marshal writes, whether appendJSON writes
// it (plain strings) or json.Marshal does.
func TestClaimViewJSONIsMarshals(t *testing.T) {
	at := time.Date(2026, 12, 2, 13, 0, 0, 0, time.UTC)
	for _, v := range []ClaimView{
		{ID: "sb-80e36c7f7c84", URL: "http://127.0.0.1:41234", ExpiresAt: at, SecondsLeft: 599},
		{ID: "sb-1", URL: "https://x.modal.run/a?b=c", ExpiresAt: at.Add(123456789), SecondsLeft: 0},
		{ID: "sb-1", URL: "http://h/?a=1&b=<2>", ExpiresAt: at}, // HTML characters: Marshal's way
		{ID: `q"uote\`, URL: "naïve\u2028", ExpiresAt: at.In(time.FixedZone("x", -(3*3600 + 30*60)))},
		{ID: "sb-2", URL: "", ExpiresAt: time.Time{}, SecondsLeft: -1},
		{ID: "sb-3", URL: "u", ExpiresAt: at.In(time.FixedZone("y", 5*3600+45*60)), SecondsLeft: 1 << 40},
		{ID: "sb-4", URL: "u", ExpiresAt: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)},
	} {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := v.appendJSON(nil)
		if !ok {
			got, _ = json.Marshal(v)
		}
		if string(got) != string(want) {
			t.Errorf("%+v:\n got %s\nwant %s", v, got, want)
		}
	}
	if _, ok := (ClaimView{ID: "sb-1", URL: "http://127.0.0.1:4000", ExpiresAt: at}).appendJSON(nil); !ok {
		t.Error("a usual claim does not take appendJSON's way")
	}
}
