package engine

// Labels the agent puts on what it creates. The decnet.fleet.* names are
// DECNET's own, so its collector and sniffer keep discovering containers.
const (
	// LabelOwner marks a container or network as the agent's; the value is
	// the agent's host identity. Nothing without it is ever changed.
	LabelOwner = "io.pull-agent.owner"
	// LabelRole is "base" (the decky's network-namespace holder) or "service".
	LabelRole = "io.pull-agent.role"
	// LabelHash is the hash of the inputs the container was rendered from.
	LabelHash = "io.pull-agent.hash"
	// LabelNetworkSpec is the hash of a network's settings.
	LabelNetworkSpec = "io.pull-agent.network-spec"
	// LabelPorts lists a service container's declared ports, "22/tcp,53/udp".
	// They are never published on the worker (the decky holds its own LAN
	// address); the label makes them part of the container's hash and lets
	// status report them from the Engine alone.
	LabelPorts = "io.pull-agent.ports"

	LabelDecky       = "decnet.fleet.decky"
	LabelService     = "decnet.fleet.service" // "true" on service containers
	LabelServiceName = "decnet.fleet.service_name"
)

// Roles of a decky's containers.
const (
	RoleBase    = "base"
	RoleService = "service"
)
