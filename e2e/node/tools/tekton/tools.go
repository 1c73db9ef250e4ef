//go:build tools

// Package tools pins Tekton's helper commands that a real node runs as images (the same version
// as the controller), in a module of its own so the control plane's cache key does not change.
package tools

import (
	_ "github.com/tektoncd/pipeline/cmd/entrypoint"
	_ "github.com/tektoncd/pipeline/cmd/nop"
	_ "github.com/tektoncd/pipeline/cmd/sidecarlogresults"
	_ "github.com/tektoncd/pipeline/cmd/workingdirinit"
)
