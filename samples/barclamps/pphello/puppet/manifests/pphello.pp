# The pphello role: the ordinary pphello module, with its parameters from Hiera (Crowbar's attribs),
# and what the run publishes to the noderole's wall (crowbar::wall does nothing outside Crowbar).
include pphello

crowbar::wall { 'pphello':
  data => {
    'pphello_url'    => "http://${facts['networking']['ip']}:${pphello::port}/",
    'pphello_puppet' => $facts['puppetversion'],
  },
}
