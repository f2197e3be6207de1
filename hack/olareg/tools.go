//go:build tools

// Package olareg pins the olareg command hack/build-olareg.sh builds, so that
// `go mod tidy` keeps every module it needs in go.mod and go.sum. It is never
// compiled (build tag "tools").
package olareg

import (
	_ "github.com/olareg/olareg/cmd/olareg"
)
