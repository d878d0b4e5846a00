package apply

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/decnet/pull-agent/desired"
)

// Image is the resolved image of one catalog entry.
type Image struct {
	Key string // "distro/<name>" or "service/<name>"
	Ref string // the reference containers run
	// ID is the local image ID of a reference source ("" when absent); it
	// is part of the container hash, so a retagged image is rolled out.
	ID string
	// Build is set when the agent builds the image from the fleet repo.
	Build *BuildJob
}

// BuildJob builds one image from a context in the fleet repository.
type BuildJob struct {
	Tag        string // deterministic: pull-agent/<kind>-<name>:<content hash>
	Context    string // directory in the repository
	Dockerfile string
	Args       map[string]string
}

// ContextHasher gives a build context's content hash (fleetsync.Snapshot).
type ContextHasher interface {
	ContextHash(dir string) (string, error)
}

// ImageInspector finds local images (engine.Docker).
type ImageInspector interface {
	ImageID(ctx context.Context, ref string) (string, error)
}

// ImageKey names a catalog entry's image.
func ImageKey(kind, name string) string { return kind + "/" + name }

// ResolveImages resolves the image of every distro and service the
// host's deckies use. A build context's tag is derived from its content,
// Dockerfile and build args only, so an unchanged context keeps its tag and
// is never rebuilt, whatever else changes in the repository.
func ResolveImages(ctx context.Context, f *desired.Fleet, h *desired.Host, tree ContextHasher, images ImageInspector) (map[string]Image, error) {
	need := map[string]desired.Source{}
	for _, d := range h.Deckies {
		if dist := f.Distros[d.Distro]; dist != nil {
			need[ImageKey("distro", d.Distro)] = dist.Source
		}
		for _, s := range d.Services {
			if svc := f.Services[s]; svc != nil {
				need[ImageKey("service", s)] = svc.Source
			}
		}
	}
	out := make(map[string]Image, len(need))
	keys := make([]string, 0, len(need))
	for k := range need {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		src := need[key]
		img := Image{Key: key}
		if src.Build != nil {
			h, err := tree.ContextHash(src.Build.Context)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			tag := buildTag(key, h, src.Build)
			img.Ref = tag
			img.Build = &BuildJob{Tag: tag, Context: src.Build.Context, Dockerfile: src.Build.Dockerfile, Args: src.Build.Args}
		} else {
			img.Ref = src.Image
			if images != nil {
				id, err := images.ImageID(ctx, src.Image)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", key, err)
				}
				img.ID = id
			}
		}
		out[key] = img
	}
	return out, nil
}

func buildTag(key, treeHash string, b *desired.Build) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", treeHash, b.Dockerfile)
	args := make([]string, 0, len(b.Args))
	for k, v := range b.Args {
		args = append(args, k+"="+v)
	}
	sort.Strings(args)
	fmt.Fprint(h, strings.Join(args, "\x00"))
	kind, name, _ := strings.Cut(key, "/")
	prefix := map[string]string{"distro": "base", "service": "svc"}[kind]
	return fmt.Sprintf("pull-agent/%s-%s:%s", prefix, name, hex.EncodeToString(h.Sum(nil))[:16])
}
