package main

import (
	"context"
	"errors"
	"io"

	"github.com/decnet/pull-agent/master"
)

func cmdMaster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var ue *master.UsageError
	if err := master.Command(ctx, args, stdout, stderr); errors.As(err, &ue) {
		return usageErr("%s", ue.Msg)
	} else {
		return err
	}
}
