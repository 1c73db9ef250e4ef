package main

import (
	"fmt"

	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/validation"
	"github.com/operator-framework/api/pkg/validation/errors"
)

// validators are what `operator-sdk bundle validate --select-optional suite=operatorframework`
// runs: the default bundle checks plus OperatorHub's metadata, categories, capabilities and good
// practices.
var validators = validation.DefaultBundleValidators.WithValidators(
	validation.OperatorHubV2Validator,
	validation.StandardCategoriesValidator,
	validation.StandardCapabilitiesValidator,
	validation.GoodPracticesValidator,
)

// olm loads a bundle directory and runs the validators; any error fails.
func olm(dir string) error {
	bundle, err := manifests.GetBundleFromDir(dir)
	if err != nil {
		return fmt.Errorf("loading bundle %s: %w", dir, err)
	}
	failed := false
	for _, result := range validators.Validate(bundle) {
		for _, e := range result.Errors {
			failed = true
			fmt.Printf("ERROR %s\n", e.Error())
		}
		for _, w := range result.Warnings {
			fmt.Printf("WARN %s\n", w.Error())
		}
	}
	if failed {
		return errors.ErrInvalidBundle("bundle validation failed", dir)
	}
	fmt.Printf("bundle %s (%s) is valid\n", dir, bundle.Name)
	return nil
}
