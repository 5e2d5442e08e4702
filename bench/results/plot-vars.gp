sep_select1 = 3.5
n_select1 = 6
sep_point = 2.5
n_point = 5
sep_copy = -1
n_copy = 2
sep_storm = 0.5
n_storm = 2
