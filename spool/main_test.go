package spool_test

import (
	"os"
	"testing"

	"github.com/ferrymq/ferry/spool"
)

// TestMain runs the child processes of the spool's tests instead of the
// tests when the test binary is re-run as one (testkit.StartChild, or
// testkit.Command with -test.run=^$, set the child's environment
// variable). The children of the package-internal tests come through
// spool.Children, as this package sees only exported names. Every child
// exits; none returns here.
func TestMain(m *testing.M) {
	children := map[string]func(){
		crashEnvPath:   runCrashChild,
		corruptEnvPath: runCorruptionChild,
		diskFullEnv:    runDiskFullChild,
		pcEnvPath:      runPowerCutWorkloadChild,
		pcEnvImages:    runPowerCutOpenChild,
		stEnvPath:      runStatePowerCutChild,
	}
	for env, run := range spool.Children {
		children[env] = run
	}
	for env, run := range children {
		if os.Getenv(env) != "" {
			run() // never returns
		}
	}
	os.Exit(m.Run())
}
