package bridgetest

import "github.com/ferrymq/ferry/internal/testkit"

// Certs is testkit.Certs (a CA, a server and a client certificate as PEM
// files), for the upstream's TLS.
type Certs = testkit.Certs

// NewCerts generates a fresh CA and certificates under dir.
var NewCerts = testkit.NewCerts

// OtherCA writes an unrelated CA into dir and returns its file.
var OtherCA = testkit.OtherCA
