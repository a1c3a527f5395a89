# Publish results to the noderole's wall: `crowbar::wall { 'name': data => { ... } }`. Every
# crowbar::wall of a run is deep-merged, in title order, into the wall (crowbar/jigs/puppet.py);
# outside Crowbar (no crowbar_wall_dir fact) it does nothing.
define crowbar::wall(Hash $data) {
  if $facts['crowbar_wall_dir'] {
    file { "${facts['crowbar_wall_dir']}/${title}.json":
      content => crowbar::to_json($data),
    }
  }
}
