//go:build tools

// Package tools pins the node commands this module builds: the same Kubernetes version as the
// control plane, in a module of its own so adding them does not rebuild the control plane.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
