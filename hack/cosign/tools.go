//go:build tools

// Package cosign pins the cosign command hack/build-cosign.sh builds, so that
// `go mod tidy` keeps every module it needs in go.mod and go.sum. It is never
// compiled (build tag "tools").
package cosign

import (
	_ "github.com/sigstore/cosign/v3/cmd/cosign"
)
