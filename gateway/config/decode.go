package config

import (
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v4"
)

// The config decoder walks a yaml.Node tree instead of using go-yaml's
// struct decoding (strict or not), for two reasons: the struct decoder
// stops at the first type error while we collect every problem; and walking
// the tree gives each field path its line and column, which Validate needs
// for its messages.

// Position is a place in a config file, 1-based.
type Position struct {
	Line, Column int
}

// Problem is one thing wrong with a configuration.
type Problem struct {
	File   string
	Line   int    // 0: unknown
	Column int    // 0: unknown
	Path   string // field path: "bridge.window", "routes[2].priority"
	Reason string
}

// String formats the problem as "file:line:col: path: reason".
func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		b.WriteString(":")
	}
	if p.Line > 0 {
		fmt.Fprintf(&b, "%d:%d:", p.Line, p.Column)
	}
	if b.Len() > 0 {
		b.WriteString(" ")
	}
	if p.Path != "" {
		b.WriteString(p.Path)
		b.WriteString(": ")
	}
	b.WriteString(p.Reason)
	return b.String()
}

// Error holds every problem found in a configuration, in file order.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// maxNodes bounds the work of one decode: aliases can make a small file
// expand exponentially ("billion laughs").
const maxNodes = 100_000

// maxDepth bounds nesting (the schema is at most five levels deep).
const maxDepth = 32

// scalarValue is implemented by leaf types with their own text syntax
// (Duration, ByteSize).
type scalarValue interface {
	setScalar(s string) error
}

// defaulter is implemented by list element types whose zero value is not
// their default (a route's priority and QoS).
type defaulter interface {
	setDefaults()
}

type decoder struct {
	file     string
	lookup   func(string) (string, bool)
	pos      map[string]Position
	problems []Problem
	budget   int
}

func (d *decoder) problem(n *yaml.Node, path, format string, args ...any) {
	p := Problem{File: d.file, Path: path, Reason: fmt.Sprintf(format, args...)}
	if n != nil {
		p.Line, p.Column = n.Line, n.Column
	}
	d.problems = append(d.problems, p)
}

func (d *decoder) record(path string, n *yaml.Node) {
	if _, ok := d.pos[path]; !ok {
		d.pos[path] = Position{n.Line, n.Column}
	}
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// decode fills v from n. path names v for messages; at is the node whose
// position a problem about v reports (the key of a mapping entry).
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string, at *yaml.Node, depth int) {
	d.budget--
	if d.budget < 0 {
		if d.budget == -1 {
			d.problem(n, path, "document too large or too many aliases (more than %d nodes)", maxNodes)
		}
		return
	}
	if depth > maxDepth {
		d.problem(n, path, "nested too deeply")
		return
	}
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			d.problem(n, path, "unresolved alias")
			return
		}
		n = n.Alias
	}
	if isNull(n) {
		return // null: keep the default
	}
	if sh, ok := v.Addr().Interface().(shorthand); ok && n.Kind == yaml.ScalarNode {
		if s, ok := d.scalar(n, path, at); ok {
			if err := sh.setShorthand(s); err != nil {
				d.problem(at, path, "%v", err)
			}
		}
		return
	}
	if sv, ok := v.Addr().Interface().(scalarValue); ok {
		s, ok := d.scalar(n, path, at)
		if !ok {
			return
		}
		if err := sv.setScalar(s); err != nil {
			d.problem(at, path, "%v", err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path, at, depth)
	case reflect.Slice:
		d.decodeSlice(n, v, path, at, depth)
	case reflect.String:
		if s, ok := d.scalar(n, path, at); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		s, ok := d.scalar(n, path, at)
		if !ok {
			return
		}
		switch s {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			d.problem(at, path, "want true or false (got %q)", s)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		s, ok := d.scalar(n, path, at)
		if !ok {
			return
		}
		i, err := strconv.ParseInt(s, 0, v.Type().Bits())
		if err != nil {
			d.problem(at, path, "want an integer (got %q)", s)
			return
		}
		v.SetInt(i)
	case reflect.Float32, reflect.Float64:
		s, ok := d.scalar(n, path, at)
		if !ok {
			return
		}
		f, err := strconv.ParseFloat(s, v.Type().Bits())
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.problem(at, path, "want a number (got %q)", s)
			return
		}
		v.SetFloat(f)
	default:
		panic(fmt.Sprintf("gateway: config field %s has unsupported type %s", path, v.Type()))
	}
}

// scalar returns the env-expanded text of a scalar node.
func (d *decoder) scalar(n *yaml.Node, path string, at *yaml.Node) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.problem(at, path, "want a single value (got %s)", kindName(n))
		return "", false
	}
	s, err := expandEnv(n.Value, d.lookup)
	if err != nil {
		d.problem(at, path, "%v", err)
		return "", false
	}
	return s, true
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string, at *yaml.Node, depth int) {
	if n.Kind != yaml.MappingNode {
		d.problem(at, path, "want a mapping (got %s)", kindName(n))
		return
	}
	fields := yamlFields(v.Type())
	seen := make(map[string]bool, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		key := k.Value
		child := key
		if path != "" {
			child = path + "." + key
		}
		if k.Kind != yaml.ScalarNode {
			d.problem(k, path, "keys must be plain words (got %s)", kindName(k))
			continue
		}
		idx, ok := fields[key]
		if !ok {
			d.problem(k, child, "unknown key%s", suggest(key, fields))
			continue
		}
		if seen[key] {
			d.problem(k, child, "duplicate key")
			continue
		}
		seen[key] = true
		d.record(child, k)
		d.decode(val, v.Field(idx), child, k, depth+1)
	}
}

func (d *decoder) decodeSlice(n *yaml.Node, v reflect.Value, path string, at *yaml.Node, depth int) {
	et := v.Type().Elem()
	if n.Kind == yaml.ScalarNode && et.Kind() == reflect.String {
		// A single string stands for a list of one: upstream: embedded.
		s, ok := d.scalar(n, path, at)
		if ok {
			v.Set(reflect.ValueOf([]string{s}).Convert(v.Type()))
		}
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.problem(at, path, "want a list (got %s)", kindName(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		child := fmt.Sprintf("%s[%d]", path, i)
		d.record(child, item)
		e := s.Index(i)
		if df, ok := e.Addr().Interface().(defaulter); ok {
			df.setDefaults()
		}
		d.decode(item, e, child, item, depth+1)
	}
	v.Set(s)
}

// yamlFields maps the yaml tag names of a struct type to field indexes.
func yamlFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		m[tag] = i
	}
	return m
}

// suggest returns " (did you mean "x"?)" for the nearest known key, or the
// list of known keys when none is near.
func suggest(key string, fields map[string]int) string {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	best, bestD := "", 3
	for _, k := range names {
		if dd := editDistance(key, k); dd < bestD {
			best, bestD = k, dd
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return " (known: " + strings.Join(names, ", ") + ")"
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// expandEnv replaces ${NAME} and ${NAME:-default} in s with the value of the
// environment variable NAME (the default when NAME is unset or empty). $${
// stands for a literal ${. Any other $ is kept, so bcrypt hashes
// ($2a$10$…) need no quoting.
func expandEnv(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		if i > 0 && s[i-1] == '$' {
			b.WriteString(s[:i]) // "$$" + "{" : drop one $
			b.WriteString("{")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("unterminated ${ in %q", s)
		}
		expr := s[i+2 : i+end]
		s = s[i+end+1:]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validEnvName(name) {
			return "", fmt.Errorf("bad environment variable name %q in ${%s}", name, expr)
		}
		val, ok := lookup(name)
		switch {
		case ok && val != "":
			b.WriteString(val)
		case hasDef:
			b.WriteString(def)
		case ok:
			// set but empty, no default: empty
		default:
			return "", fmt.Errorf("environment variable %s is not set (write ${%s:-default} for a default)", name, name)
		}
	}
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// Duration is a time.Duration written as "30s", "5m", "1h30m" in YAML.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

func (d *Duration) setScalar(s string) error {
	if s == "0" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as 500ms, 30s, 5m, 1h (got %q)", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes d as a duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// ByteSize is a size in bytes written as a number or with a unit: 512MiB,
// 1GiB, 64KiB (powers of 1024) or 500MB, 1GB (powers of 1000); B for bytes.
// Units are case-insensitive.
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{ // longest suffixes first
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"b", 1},
}

func (b *ByteSize) setScalar(s string) error {
	bad := fmt.Errorf("want a size such as 1048576, 512KiB, 64MiB, 1GiB (got %q)", s)
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	if t == "" {
		return bad
	}
	if i, err := strconv.ParseInt(t, 10, 64); err == nil {
		if i < 0 {
			return fmt.Errorf("must not be negative (got %q)", s)
		}
		if i > math.MaxInt64/mult {
			return fmt.Errorf("too large (got %q)", s)
		}
		*b = ByteSize(i * mult)
		return nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return bad
	}
	if f < 0 {
		return fmt.Errorf("must not be negative (got %q)", s)
	}
	if f*float64(mult) >= math.MaxInt64 {
		return fmt.Errorf("too large (got %q)", s)
	}
	*b = ByteSize(f * float64(mult))
	return nil
}

func (b ByteSize) String() string {
	for _, u := range []struct {
		s string
		m int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.m == 0 {
			return fmt.Sprintf("%d%s", int64(b)/u.m, u.s)
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// MarshalYAML writes b with the largest exact binary unit.
func (b ByteSize) MarshalYAML() (any, error) { return b.String(), nil }
