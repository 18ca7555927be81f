// Package config owns the gateway's configuration: one YAML file with
// snake_case keys, its schema (Config and the structs below it), the
// defaults of every key (Default), strict decoding that collects every
// problem with its position (Load, Parse), validation (Validate, and
// CheckFiles for the files it names), and the mapping of each section to
// the Options of the package that uses it (options.go). It imports the
// packages it maps to (spool, bridge, protocols/mqtt, protocols/stomp,
// protocols/message) and nothing of the gateway: the gateway and the
// tools (ferry check, ferry spool) import it.
//
// # Problems
//
// Every problem is a Problem, "file:line:col: path: reason"; Load and Parse
// return an *Error listing all of them in file order, not the first only.
// A value that could not be decoded keeps its default and is reported
// once, by the decoder. configs/ferry.example.yaml shows every key with
// its default and docs/configuration.md describes each; tests hold both to
// the schema.
//
// # Enums
//
// A key that takes one word from a fixed list has a string type of its
// own (Durability, Overflow, ExpiryAction, Verify, Format, QoS0Policy,
// LogLevel, LogFormat, TLSVersion, UsernameFrom) with constants for the
// words. Its Validate method returns "must be a, b (got "x")"; a method
// named after the target package (Spool, Bridge, Message, Slog, TLS,
// CertUsername) maps it to that package's value. enums.go lists them.
//
// # Zero: none or default
//
// A configuration holds every default already: Default fills them in
// before a file is decoded, and a key written empty keeps its default. So
// a zero in a Config never asks for "the default". For a few keys zero
// means none (spool.max_bytes, spool.dedupe_window, spool.lower_lane_share:
// strict priority, limits.mqtt.max_connections, limits.stomp.heartbeat:
// off), and for a few it means a value derived from other keys
// (limits.mqtt.write_buffer, publish_burst, limits.login.max_concurrent),
// as each key's comment says. The Options of spool, mqtt and stomp read 0
// as their own default and a negative value as none; options.go turns a
// configuration's "0: none" into that negative value in one place (none),
// so no other code rewrites sentinels.
//
// # Concurrency
//
// A Config is a plain value: safe to read from many goroutines, not to
// change while others read it. A reload loads a new Config; it does not
// change the running one.
package config
