// Package testkit holds what the tests of every Ferry package share: the
// bound of a wait, and (see the other files) the kill-a-child harness
// (StartChild), an in-memory listener for synctest bubbles (PipeListener)
// and the certificate maker. The recording message.Sink is in the
// subpackage recsink, so that testkit itself imports nothing of Ferry's.
// Only tests import it.
//
// # Waiting
//
// No test asserts wall-clock time. A test that waits for something to happen
// (a message to arrive, a stall to be detected) waits with WaitUntil or
// After: the bound is a hang guard only, generous, and multiplied by
// FERRY_TEST_TIMEOUT_SCALE (default 1) so that a loaded CI machine can raise
// every bound at once without touching a test. What a test asserts is an
// outcome (the message arrived, in order, once), never how long it took.
// Code whose behaviour depends on a timer (backoff, heart-beats, stall
// detection) is tested inside testing/synctest, where time is virtual.
package testkit
