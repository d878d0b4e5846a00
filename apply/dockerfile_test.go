package apply

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestDockerfileImages(t *testing.T) {
	tests := []struct {
		name   string
		df     string
		args   map[string]string
		want   []string // "line What name"
		errHas []string // refusal: each must appear in the error
	}{
		{"scratch needs nothing", "FROM scratch\nCOPY decoy /decoy\n", nil, nil, nil},
		{"a plain image", "FROM debian:bookworm-slim\nRUN true\n", nil, []string{"1 FROM debian:bookworm-slim"}, nil},
		{"every stage, earlier stages by name and index are internal",
			"FROM golang:1.26 AS build\nRUN go build\nFROM build AS again\nFROM Scratch\nCOPY --from=build /x /x\nCOPY --from=0 /y /y\nCOPY --from=alpine:3 /z /z\n",
			nil, []string{"1 FROM golang:1.26", "7 COPY --from alpine:3"}, nil},
		{"a stage index not yet built is an image name",
			"FROM scratch\nCOPY --from=1 /x /x\nFROM scratch\n", nil, []string{"2 COPY --from 1"}, nil},
		{"RUN --mount from an image",
			"FROM scratch AS s\nFROM debian\nRUN --mount=type=bind,from=tools:1,target=/t true\nRUN --mount=type=bind,from=s,target=/s true\n",
			nil, []string{"2 FROM debian", "3 RUN --mount from= tools:1"}, nil},
		{"ARG default before FROM is resolved",
			"ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\n", nil, []string{"2 FROM debian:bookworm-slim"}, nil},
		{"a build argument overrides the ARG default",
			"ARG BASE_IMAGE=debian:bookworm-slim\nFROM $BASE_IMAGE AS b\n", map[string]string{"BASE_IMAGE": "ubuntu:22.04"}, []string{"2 FROM ubuntu:22.04"}, nil},
		{"an undeclared variable is refused",
			"FROM ${BASE_IMAGE}\n", map[string]string{"BASE_IMAGE": "x"}, nil, []string{"Dockerfile:1", "BASE_IMAGE", "cannot be resolved offline"}},
		{"a declared ARG with no default and no build argument is refused",
			"ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n", nil, nil, []string{"Dockerfile:2", "BASE_IMAGE"}},
		{"an empty RUN --mount from= is refused with its line",
			"FROM 0\nRUN --mount=from", nil, nil, []string{"Dockerfile:2", "RUN --mount from= names no stage or image"}},
		{"an empty COPY --from= is refused with its line",
			"FROM a\nCOPY --from= / /\n", nil, nil, []string{"Dockerfile:2", "COPY --from= names no stage or image"}},
		{"a syntax directive is refused",
			"# syntax=docker/dockerfile:1.7\nFROM scratch\n", nil, nil, []string{"Dockerfile:1", "docker/dockerfile:1.7", "frontend"}},
		{"ADD from a URL is refused",
			"FROM scratch\nADD https://example.com/x /x\n", nil, nil, []string{"Dockerfile:2", "https://example.com/x", "network"}},
		{"ADD from git is refused",
			"FROM scratch\nADD git@github.com:a/b.git /b\n", nil, nil, []string{"Dockerfile:2", "git@github.com"}},
		{"FROM --platform is refused",
			"FROM --platform=linux/arm64 debian\n", nil, nil, []string{"Dockerfile:1", "--platform"}},
		{"no FROM", "# nothing\n", nil, nil, []string{"Dockerfile"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			refs, err := dockerfileImages([]byte(tt.df), "services/x/Dockerfile", tt.args)
			if len(tt.errHas) > 0 {
				if err == nil {
					t.Fatalf("accepted, found %v", refs)
				}
				if !errors.Is(err, ErrBuildRefused) {
					t.Errorf("error %v is not classified as ErrBuildRefused", err)
				}
				for _, s := range tt.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range refs {
				got = append(got, strings.Join([]string{strconv.Itoa(r.Line), r.What, r.Name}, " "))
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func FuzzDockerfileImages(f *testing.F) {
	f.Add("FROM scratch\n")
	f.Add("ARG A=b\nFROM ${A} AS x\nCOPY --from=x / /\nRUN --mount=from=y true\n")
	f.Add("# syntax=x\nFROM a\n")
	f.Add("FROM 0\nRUN --mount=from") // found by fuzzing: an empty from= was an image named ""
	f.Add("FROM a\nCOPY --from= / /\n")
	f.Fuzz(func(t *testing.T, df string) {
		refs, err := dockerfileImages([]byte(df), "Dockerfile", nil)
		if err != nil {
			return
		}
		for _, r := range refs {
			if r.Name == "" || strings.EqualFold(r.Name, "scratch") || r.Line < 1 {
				t.Errorf("bad reference %+v", r)
			}
		}
	})
}
