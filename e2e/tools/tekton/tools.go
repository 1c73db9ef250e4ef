//go:build tools

// Package tools pins the Tekton Pipelines controller this module builds.
package tools

import _ "github.com/tektoncd/pipeline/cmd/controller"
