package spooltest

import (
	"testing"

	"github.com/ferrymq/ferry/protocols/message"
	"github.com/ferrymq/ferry/spool"
)

// StoredPayloads opens the spool file at path (after the process that held
// it was killed) and returns the payloads of every queued message, decoded
// with message.Decode. It fails the test when the file cannot be opened or
// a record cannot be decoded.
func StoredPayloads(t testing.TB, path string) map[string]bool {
	t.Helper()
	sp, err := spool.Open(path, spool.Options{})
	if err != nil {
		t.Fatalf("reopen %s after the kill: %v", path, err)
	}
	defer func() { _ = sp.Close() }()
	stored := map[string]bool{}
	for {
		items, err := sp.TryLease(1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			return stored
		}
		for _, it := range items {
			m, err := message.Decode(it.Data)
			if err != nil {
				t.Fatalf("stored message %d: %v", it.ID, err)
			}
			stored[string(m.Payload)] = true
		}
	}
}

// RequireAcknowledgedStored is the check of G1 after a SIGKILL: every
// payload in acked (what clients saw acknowledged: a PUBACK, PUBREC or
// RECEIPT) is in the spool file at path. what names the acknowledgement in
// the messages ("PUBACK/PUBREC", "RECEIPT"). It fails when acked is empty:
// a kill before any acknowledgement proves nothing.
func RequireAcknowledgedStored(t testing.TB, path string, acked map[string]bool, what string) {
	t.Helper()
	if len(acked) == 0 {
		t.Fatalf("no %s before the kill: the test proves nothing", what)
	}
	stored := StoredPayloads(t, path)
	var missing []string
	for p := range acked {
		if !stored[p] {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d messages that got a %s are not in the spool after SIGKILL, e.g. %v", len(missing), len(acked), what, missing[:min(5, len(missing))])
	}
	t.Logf("%s for %d, stored %d (the extra ones were in flight at the kill)", what, len(acked), len(stored))
}
