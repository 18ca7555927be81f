package gateway

import (
	"strings"
	"testing"

	"github.com/ferrymq/ferry/gateway/config"
	"github.com/ferrymq/ferry/protocols/message"
)

// aclAuth is an Auth with one user whose publish and subscribe rules are
// the one filter acl.
func aclAuth(user, acl string) *Auth {
	a := &Auth{cache: map[[32]byte]struct{}{}}
	a.state.Store(&authState{users: map[string]*authUser{user: {acl: config.ACL{Publish: []string{acl}, Subscribe: []string{acl}}}}})
	return a
}

// refFilter is the ACL filter with the user's names written in, the way an
// operator would read the rule; ok false when a name used in it could widen
// it (empty, or a separator or wildcard in it): then the rule allows
// nothing.
func refFilter(acl, user, client string) (string, bool) {
	for _, p := range []struct{ ph, name string }{{"%u", user}, {"%c", client}} {
		if strings.Contains(acl, p.ph) && (p.name == "" || strings.ContainsAny(p.name, "/+#\x00")) {
			return "", false
		}
	}
	// One pass: a user named "%c" is a name, not a placeholder.
	return strings.NewReplacer("%u", user, "%c", client).Replace(acl), true
}

// validACL reports whether the config would accept acl as a rule.
func validACL(t *testing.T, acl string) bool {
	t.Helper()
	c := mustParse(t, minimal)
	c.Anonymous = config.ACL{Publish: []string{acl}}
	return c.Validate() == nil
}

// FuzzACLPublish: a publish rule allows exactly the topics its filter (with
// %u and %c written in) grants (aclMatch: message.Match, plus $ topics other
// than $SYS for a wildcard first level).
func FuzzACLPublish(f *testing.F) {
	// Seeds: testdata/fuzz/FuzzACLPublish.
	f.Add("sensors/%c/#", "dev", "pump1", "sensors/pump1/temp")
	f.Add("#", "dev", "pump1", "$TopicA/B")
	f.Add("+/B", "dev", "pump1", "$SYS/B")
	f.Fuzz(func(t *testing.T, acl, user, client, topic string) {
		if user == "" || !validACL(t, acl) || message.ValidateTopic(topic) != nil {
			return // "" is the anonymous client, with its own rules
		}
		got := aclAuth(user, acl).CanPublish(user, client, topic)
		ref, ok := refFilter(acl, user, client)
		want := ok && aclMatch(ref, topic)
		if got != want {
			t.Fatalf("rule %q, client %q, topic %q: CanPublish = %v, filter %q matches: %v", acl, client, topic, got, ref, want)
		}
	})
}

// FuzzACLSubscribe: a subscribe rule allows a subscription exactly when
// every topic the subscription can match is matched by the rule's filter.
// The topics tried are all the distinct cases the rule can tell apart
// (coverTopics), so a refusal must come with a topic the rule does not
// match, and an allowance with none.
func FuzzACLSubscribe(f *testing.F) {
	// Seeds and crashers: testdata/fuzz/FuzzACLSubscribe.
	f.Add("a/+", "a/b", "c")
	f.Add("#", "$TopicA/#", "c")
	f.Add("+/#", "$sys/+", "c")
	f.Fuzz(func(t *testing.T, acl, sub, client string) {
		if !validACL(t, acl) || message.ValidateFilter(sub) != nil || strings.Count(sub, "/") > 5 || strings.Count(acl, "/") > 5 {
			return
		}
		got := aclAuth("u", acl).CanSubscribe("u", client, sub)
		ref, ok := refFilter(acl, "u", client)
		if !ok {
			if got {
				t.Fatalf("rule %q with client %q allows %q although the name would widen it", acl, client, sub)
			}
			return
		}
		topics, complete := coverTopics(ref, sub)
		if !complete {
			return
		}
		outside, found := "", false
		for _, topic := range topics {
			if !message.Match(sub, topic) {
				t.Fatalf("coverTopics(%q, %q) made %q, which %q does not match", ref, sub, topic, sub)
			}
			if !aclMatch(ref, topic) {
				outside, found = topic, true
				break
			}
		}
		switch {
		case got && found:
			t.Fatalf("rule %q allows subscribing to %q, which matches %q outside the rule", ref, sub, outside)
		case !got && !found:
			t.Fatalf("rule %q refuses subscribing to %q, but every topic it matches is inside the rule", ref, sub)
		}
	})
}

// coverTopics returns topics matching the filter sub that represent every
// case the filter acl can tell apart: at each level a wildcard of sub takes
// acl's literal at that level or a fresh value equal to none of acl's, and
// '#' takes 0 (its parent) up to len(acl)+1 levels. acl only compares
// levels for equality, counts them and treats a first-level '$' specially
// (which a wildcard of sub never yields), so some topic matching sub lies
// outside acl exactly when one of these does. complete is false when there
// were too many to list.
func coverTopics(acl, sub string) (topics []string, complete bool) {
	al := strings.Split(acl, "/")
	fresh := "zz"
	for strings.Contains("/"+acl+"/", "/"+fresh+"/") {
		fresh += "z"
	}
	// A wildcard never yields a first level starting with '$'.
	choices := func(i int) []string {
		if i >= len(al) || al[i] == "+" || al[i] == "#" || (i == 0 && strings.HasPrefix(al[i], "$")) {
			return []string{fresh}
		}
		return []string{al[i], fresh}
	}
	var out []string
	var walk func(prefix []string, rest []string)
	walk = func(prefix, rest []string) {
		if len(out) > maxCoverTopics {
			return
		}
		if len(rest) == 0 {
			if topic := strings.Join(prefix, "/"); message.ValidateTopic(topic) == nil {
				out = append(out, topic)
			}
			return
		}
		i := len(prefix)
		switch rest[0] {
		case "#":
			if i > 0 {
				walk(prefix, nil) // the parent level
			}
			var extend func(p []string, n int)
			extend = func(p []string, n int) {
				if n <= 0 {
					return
				}
				for _, c := range choices(len(p)) {
					q := append(append([]string(nil), p...), c)
					walk(q, nil)
					extend(q, n-1)
				}
			}
			extend(prefix, len(al)+1-i)
		case "+":
			for _, c := range choices(i) {
				walk(append(append([]string(nil), prefix...), c), rest[1:])
			}
		default:
			walk(append(append([]string(nil), prefix...), rest[0]), rest[1:])
		}
	}
	walk(nil, strings.Split(sub, "/"))
	return out, len(out) <= maxCoverTopics
}

const maxCoverTopics = 1 << 14
