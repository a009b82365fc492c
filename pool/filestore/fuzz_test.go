package filestore

import (
	"bytes"
	"testing"
)

// FuzzDecode: every input decodes or errors, never panics; what decodes
// survives a snapshot/decode round trip unchanged.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"version":1,"entries":[]}`))
	f.Add([]byte(`{"version":1,"target":3,"entries":[{"id":"a","url":"http://127.0.0.1:1","created_at":"2030-01-01T00:00:00Z","expires_at":"2030-01-01T00:05:00Z","claimed_by":"cli","claimed_at":"2030-01-01T00:01:00+02:00"}]}`))
	f.Add([]byte(`{"version":2,"ttl":"2m0s","use_duration":"30s","entries":[
{"id":"a","url":"u","created_at":"2030-01-01T00:00:00Z","expires_at":"2030-01-01T00:05:00Z"}
]}
{"op":"put","id":"b","url":"u","created_at":"2030-01-01T00:00:00Z","expires_at":"2030-01-01T00:04:00Z"}
{"op":"claim","id":"a","by":"cli","at":"2030-01-01T00:01:00Z"}
{"op":"del","id":"b"}
{"op":"target","n":4}
{"op":"timing","ttl":"5m","use_duration":"1m"}
{"op":"put","id":"c","ur`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, lay, err := decode(data)
		if err != nil {
			return
		}
		if lay.end < lay.snapEnd || lay.end > lay.size || lay.size != int64(len(data)) {
			t.Fatalf("layout %+v of %d bytes", lay, len(data))
		}
		var first, second bytes.Buffer
		if err := encodeSnapshot(&first, st, nil); err != nil {
			t.Fatalf("encode of a decoded file: %v", err)
		}
		again, _, err := decode(first.Bytes())
		if err != nil {
			t.Fatalf("re-decode: %v\n%s", err, first.Bytes())
		}
		if err := encodeSnapshot(&second, again, nil); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first.Bytes(), second.Bytes()) {
			t.Fatalf("round trip changed the file:\n%s\n%s", first.Bytes(), second.Bytes())
		}
	})
}
