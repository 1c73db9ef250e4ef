package main

import (
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// kstatus prints "<file> <Status> <message>" for each object, as kstatus computes it.
func kstatus(paths []string) error {
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		// Unstructured's own decoder keeps integers int64, as the API machinery (and Flux) does.
		var obj unstructured.Unstructured
		if err := obj.UnmarshalJSON(data); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		res, err := status.Compute(&obj)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		fmt.Printf("%s\t%s\t%s\n", p, res.Status, res.Message)
	}
	return nil
}
