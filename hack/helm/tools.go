//go:build tools

// Package tools pins the helm command so that `go build helm.sh/helm/v3/cmd/helm`
// in this module uses exactly the versions in go.mod and go.sum.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
