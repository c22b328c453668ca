//go:build !linux

package main

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/oakwire/oakwire/netmanager/localapi"
)

func deployNetns(context.Context, *localapi.Client, string, localapi.DeployRequest) (*localapi.DeployResponse, error) {
	return nil, types.NewError(types.ErrInternal, "oakwire-cni needs Linux", "")
}

func checkNetns(string, string, *localapi.ContainerInfo) error {
	return errors.New("oakwire-cni needs Linux")
}
