package spool

// Children are the child processes of this package's own tests (the
// package-internal ones), by the environment variable that makes the test
// binary one of them. TestMain is in package spool_test (main_test.go),
// which sees only exported names: this is how it finds them. Each runs its
// job and exits; none returns.
var Children = map[string]func(){
	batchKillEnv:  runPutBatchKillChild,
	failEnv:       runWriterFailureChild,
	openReportEnv: runOpenReportChild,
}
