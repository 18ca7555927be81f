package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v4"
)

// Load reads the configuration file at path, loads its users_file, and
// validates everything, including that the
// files it names exist (CheckFiles). ${ENV} references are expanded from
// the process environment. The error is an *Error listing every
// problem, or an I/O error.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(path, data, os.LookupEnv)
	if err != nil {
		return nil, err
	}
	if err := c.LoadUsersFile(); err != nil {
		return nil, err
	}
	if err := c.CheckFiles(); err != nil {
		return nil, err
	}
	return c, nil
}

// Parse decodes and validates a configuration without touching the file
// system (no users_file, no file checks: see Load). name is used in
// problems; lookupEnv resolves ${ENV} (nil: none set).
func Parse(name string, data []byte, lookupEnv func(string) (string, bool)) (*Config, error) {
	c, problems, err := decode(name, data, lookupEnv)
	if err != nil {
		return nil, err
	}
	var ce *Error
	if errors.As(c.Validate(), &ce) {
		// A value that could not be decoded kept its default; do not
		// report the default again.
		problems = append(problems, uncovered(ce.Problems, problems)...)
	}
	if len(problems) > 0 {
		sortProblems(problems)
		return nil, &Error{Problems: problems}
	}
	return c, nil
}

// uncovered returns the problems of ps whose path is not, or not inside, the
// path of a problem in already.
func uncovered(ps, already []Problem) []Problem {
	var out []Problem
next:
	for _, p := range ps {
		for _, q := range already {
			if q.Path != "" && (p.Path == q.Path || strings.HasPrefix(p.Path, q.Path+".") || strings.HasPrefix(p.Path, q.Path+"[")) {
				continue next
			}
		}
		out = append(out, p)
	}
	return out
}

// sortProblems orders problems by position, those without one (about keys
// not written) last, keeping the order of problems at the same place.
func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if (a.Line == 0) != (b.Line == 0) {
			return b.Line == 0
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// decode fills Default() from data. It returns the syntax, type and
// unknown-key problems (not semantic ones) with the configuration decoded
// around them, or an error when the text is not YAML at all.
func decode(name string, data []byte, lookupEnv func(string) (string, bool)) (*Config, []Problem, error) {
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	c := Default()
	c.file = name
	c.pos = make(map[string]Position)
	d := &decoder{file: name, lookup: lookupEnv, pos: c.pos, budget: maxNodes}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, &Error{Problems: []Problem{syntaxProblem(name, err)}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		d.problem(&extra, "", "only one YAML document is allowed")
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		d.decode(doc.Content[0], reflect.ValueOf(c).Elem(), "", doc.Content[0], 0)
	}
	return c, d.problems, nil
}

// syntaxProblem turns a YAML syntax error into a positioned problem. The
// position is where the parser gave up (yaml.v3 reported the start of the
// enclosing block instead, often lines above a mis-indented key); the
// construct it was in follows in the reason.
func syntaxProblem(name string, err error) Problem {
	var le *yaml.LoadError
	if !errors.As(err, &le) {
		return Problem{File: name, Reason: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	p := Problem{File: name, Line: le.Mark.Line, Column: le.Mark.Column, Reason: le.Message}
	if p.Line > 0 && p.Column == 0 {
		p.Column = 1
	}
	if le.ContextMsg != "" && le.ContextMark.Line > 0 && le.ContextMark != le.Mark {
		p.Reason += fmt.Sprintf(" (%s at %d:%d)", le.ContextMsg, le.ContextMark.Line, le.ContextMark.Column)
	}
	if indentation[le.Message] {
		p.Reason += "; check the indentation of this line and the one above"
	}
	return p
}

// indentation lists the parser messages that mostly mean a line indented
// one way too far or too short.
var indentation = map[string]bool{
	"did not find expected key":                      true,
	"did not find expected '-' indicator":            true,
	"mapping values are not allowed in this context": true,
}

// Position returns where the key of a field path was written, and whether it
// was (false: the value is a default).
func (c *Config) Position(path string) (Position, bool) {
	p, ok := c.pos[path]
	return p, ok
}

// File returns the name the configuration was loaded from.
func (c *Config) File() string { return c.file }

// LoadUsersFile reads users_file into Users. Like every path in the
// configuration, a relative users_file is relative to the working directory.
func (c *Config) LoadUsersFile() error {
	if c.UsersFile == "" {
		return nil
	}
	data, err := os.ReadFile(c.UsersFile)
	if err != nil {
		return fmt.Errorf("config: users_file: %w", err)
	}
	users, err := parseUsers(c.UsersFile, data, c.certLogins())
	if err != nil {
		return err
	}
	c.Users = users
	return nil
}

// usersFile is the schema of a users_file.
type usersFile struct {
	Users []User `yaml:"users"`
}

// LoadUsers reads a users file: a YAML mapping with one key, users, in the
// same form as the users key of the main file. Problems are reported with
// positions in that file. Every user needs a password_hash (LoadUsersFile
// allows none for certificate logins when the configuration has them).
func LoadUsers(path string) ([]User, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: users_file: %w", err)
	}
	return parseUsers(path, data, false)
}

func parseUsers(name string, data []byte, certLogins bool) ([]User, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{Problems: []Problem{syntaxProblem(name, err)}}
	}
	var uf usersFile
	pos := make(map[string]Position)
	d := &decoder{file: name, lookup: os.LookupEnv, pos: pos, budget: maxNodes}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		d.decode(doc.Content[0], reflect.ValueOf(&uf).Elem(), "", doc.Content[0], 0)
	}
	v := &validator{file: name, pos: pos}
	v.users(uf.Users, certLogins)
	problems := append(d.problems, uncovered(v.problems, d.problems)...)
	if len(problems) > 0 {
		sortProblems(problems)
		return nil, &Error{Problems: problems}
	}
	return uf.Users, nil
}
