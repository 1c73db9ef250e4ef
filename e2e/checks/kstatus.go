package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func readObject(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var obj map[string]interface{}
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return obj, nil
}

// kstatus prints "<file> <Status> <message>" for each object, as kstatus computes it.
func kstatus(paths []string) error {
	for _, p := range paths {
		obj, err := readObject(p)
		if err != nil {
			return err
		}
		res, err := status.Compute(&unstructured.Unstructured{Object: obj})
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		fmt.Printf("%s\t%s\t%s\n", p, res.Status, res.Message)
	}
	return nil
}
