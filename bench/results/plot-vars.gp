sep_select1 = 3.5
n_select1 = 6
sep_point = 3.5
n_point = 6
sep_copy = -1
n_copy = 3
sep_storm = 1.5
n_storm = 3
