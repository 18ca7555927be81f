package message

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestValidateTopicRefusesWhatBrokersRefuse: every boundary of the code
// point ranges MQTT 3.1.1 §1.5.3 lets a receiver close the connection for
// (mosquitto does; bridge.TestValidateTopicAgreesWithMosquitto checks the
// same table against a real one), and their neighbours that must pass.
func TestValidateTopicRefusesWhatBrokersRefuse(t *testing.T) {
	for _, tc := range []struct {
		r    rune
		ok   bool
		want string // in the error
	}{
		{0x01, false, "control character U+0001"},
		{0x09, false, "control character U+0009"},
		{0x1f, false, "control character U+001F"},
		{0x20, true, ""},
		{0x7e, true, ""},
		{0x7f, false, "control character U+007F"},
		{0x80, false, "control character U+0080"},
		{0x9f, false, "control character U+009F"},
		{0xa0, true, ""},
		{0xd7ff, true, ""},
		{0xe000, true, ""},
		{0xfdcf, true, ""},
		{0xfdd0, false, "non-character U+FDD0"},
		{0xfdef, false, "non-character U+FDEF"},
		{0xfdf0, true, ""},
		{0xfeff, true, ""}, // a BOM is a character; MQTT says keep it
		{0xfffd, true, ""},
		{0xfffe, false, "non-character U+FFFE"},
		{0xffff, false, "non-character U+FFFF"},
		{0x10000, true, ""},
		{0x1fffd, true, ""},
		{0x1fffe, false, "non-character U+1FFFE"},
		{0x1ffff, false, "non-character U+1FFFF"},
		{0x20000, true, ""},
		{0x10fffd, true, ""},
		{0x10fffe, false, "non-character U+10FFFE"},
		{0x10ffff, false, "non-character U+10FFFF"},
	} {
		topic := "a/" + string(tc.r) + "/b"
		err := ValidateTopic(topic)
		ferr := ValidateFilter(topic)
		if (err == nil) != tc.ok || (ferr == nil) != tc.ok {
			t.Errorf("%U: ValidateTopic %v, ValidateFilter %v; want ok=%v", tc.r, err, ferr, tc.ok)
			continue
		}
		if !tc.ok && (!errors.Is(err, ErrInvalidTopic) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "byte 2")) {
			t.Errorf("%U: error %q, want ErrInvalidTopic naming %q at byte 2", tc.r, err, tc.want)
		}
	}
	for _, tc := range []struct{ topic, want string }{
		{"a\x00b", "NUL (byte 1)"},
		{"ok/\xff", "not valid UTF-8 (byte 3)"},
		{"\xed\xa0\x80", "not valid UTF-8 (byte 0)"}, // a surrogate, U+D800
	} {
		if err := ValidateTopic(tc.topic); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidateTopic(%q) = %v, want %q", tc.topic, err, tc.want)
		}
	}
}

// FuzzValidateTopic checks ValidateTopic against the rules written out the
// slow way, and that a valid topic name is a valid filter that matches
// itself.
func FuzzValidateTopic(f *testing.F) {
	for _, s := range []string{"a/b", "sensors/room1/temp", "a/+/b", "#", "a\x01", "\u0085", "\ufdd0", "\U0010ffff", "\xff", "", "/", "$SYS/x", "ü/∆"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		want := topic != "" && len(topic) <= MaxTopicLen && utf8.ValidString(topic) && !strings.ContainsAny(topic, "+#")
		for _, r := range topic {
			if r == 0 || r < 0x20 || (r >= 0x7f && r < 0xa0) || (r >= 0xfdd0 && r <= 0xfdef) || r%0x10000 == 0xfffe || r%0x10000 == 0xffff {
				want = false
			}
		}
		err := ValidateTopic(topic)
		if (err == nil) != want {
			t.Fatalf("ValidateTopic(%q) = %v, want ok=%v", topic, err, want)
		}
		if err != nil && !errors.Is(err, ErrInvalidTopic) {
			t.Fatalf("ValidateTopic(%q): %v does not wrap ErrInvalidTopic", topic, err)
		}
		if err == nil {
			if ferr := ValidateFilter(topic); ferr != nil {
				t.Fatalf("valid topic %q is not a valid filter: %v", topic, ferr)
			}
			if !Match(topic, topic) {
				t.Fatalf("topic %q does not match itself as a filter", topic)
			}
		}
	})
}

// refMatch is MQTT 3.1.1 §4.7 written the slow way: split into levels, '+'
// takes one level, '#' the rest including the parent, and a topic starting
// with '$' is not matched by a filter starting with a wildcard.
func refMatch(filter, topic string) bool {
	fl, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (fl[0] == "+" || fl[0] == "#") {
		return false
	}
	for i, f := range fl {
		if f == "#" {
			return true // also the parent: "a/#" matches "a"
		}
		if i >= len(tl) {
			return false
		}
		if f != "+" && f != tl[i] {
			return false
		}
	}
	return len(fl) == len(tl)
}

// FuzzMatch is a differential test of Match against refMatch, for every
// valid filter and topic name.
func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{
		{"a/b", "a/b"}, {"a/+", "a/b"}, {"a/+", "a/b/c"}, {"a/#", "a"}, {"#", "$SYS/x"}, {"$SYS/#", "$SYS/x"},
		{"+/+", "/"}, {"a/+/c", "a//c"}, {"+", ""}, {"/#", "/"}, {"a//#", "a/"}, {"+/#", "a"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if ValidateFilter(filter) != nil || ValidateTopic(topic) != nil {
			return
		}
		if got, want := Match(filter, topic), refMatch(filter, topic); got != want {
			t.Fatalf("Match(%q, %q) = %v, the spec says %v", filter, topic, got, want)
		}
	})
}
